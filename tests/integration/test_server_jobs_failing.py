from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest
from sqlalchemy.engine import make_url

from worker.cli.main import main
from worker.monitoring.exporter import build_registry
from worker.schema.migrate import migrate
from worker.schema.server_check import PROJECT_JOBS, check_server


def _url_with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def failing_jobs_url(database_url: str) -> Iterator[str]:
    """A database of its own on the test server in which every scheduled job really fails.

    Its default transactions are read-only, so every refresh and retention run and the
    project's own job fail when the server's scheduler runs them; compression over empty
    tables writes nothing and would succeed, so those jobs are paused.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        workers = conn.execute(
            "select count(*) from pg_stat_activity"
            " where backend_type = 'TimescaleDB Background Worker Launcher'"
        ).fetchone()
        if not workers or not workers[0]:
            pytest.skip("the test server runs no TimescaleDB background workers (embedded engine)")
    name = f"jobs_failing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = _url_with_database(database_url, name)
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "select public.alter_job(job_id, scheduled => false)"
                " from timescaledb_information.jobs"
                " where hypertable_schema = 'observability' and proc_name = 'policy_compression'"
            )
            conn.execute(f'alter database "{name}" set default_transaction_read_only = on')
            conn.execute(
                "select public.alter_job(job_id, next_start => pg_catalog.now())"
                " from timescaledb_information.jobs"
                " where scheduled and (hypertable_schema = 'observability'"
                " or proc_schema = 'observability')"
            )
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def _wait_all_failing(url: str, timeout: float = 300.0) -> Any:
    """Until several jobs ran, all failing. The server's worker budget is shared with every
    other database on it, so on a crowded server the rest may still be waiting for a slot."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(url, autocommit=True) as conn:
            report = check_server(conn)
        runs = report.facts.runs
        if runs.ran >= 3 and runs.all_failing:
            return report
        if time.monotonic() > deadline:
            pytest.fail(f"the jobs did not all fail within {timeout} s: {runs}")
        time.sleep(2)


def test_status_and_exporter_say_every_job_is_failing(
    failing_jobs_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _wait_all_failing(failing_jobs_url)
    # every project job but the paused compression policies, one per raw hypertable
    raw_tables = len(("traces", "spans", "span_events", "document_events"))
    assert report.facts.runs.jobs == PROJECT_JOBS - raw_tables

    assert main(["status", "--database-url", failing_jobs_url]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("SERVER ERROR: every database-side job is failing"), first
    assert re.search(r"the latest run of all \d+ jobs that ran failed", first), first
    assert "read-only transaction" in first or "failed to execute" in first, first

    scraped = generate_latest(build_registry(failing_jobs_url)).decode()
    assert "observability_database_jobs_all_failing 1.0" in scraped
    failing = re.search(r"^observability_database_jobs_failing (\S+)$", scraped, re.M)
    assert failing is not None and float(failing.group(1)) >= 3
    assert 'observability_server_check_findings{level="error"} 1.0' in scraped


def test_exporter_says_jobs_are_not_all_failing(migrated_database_url: str) -> None:
    scraped = generate_latest(build_registry(migrated_database_url)).decode()
    assert "observability_database_jobs_all_failing 0.0" in scraped
    assert 'observability_server_check_findings{level="error"} 0.0' in scraped
