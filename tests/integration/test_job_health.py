from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.celery_support import ROOT
from tests.health_probe import (
    PROBE_ERROR,
    PROBE_ROLLUP,
    db_now,
    make_it_fail,
    probe_rollup,
    sample,
    scrape,
)
from tests.rollup_support import connect
from worker.cli.main import main
from worker.monitoring.health import JobStatus, rollup_health

PIPELINE_HEALTH = ROOT / "dashboards" / "pipeline-health.json"


@pytest.fixture
def probe_conn(migrated_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(migrated_database_url) as conn:
        yield conn


@pytest.fixture
def failing_job(probe_conn: psycopg.Connection[Any]) -> Iterator[int]:
    """A refresh policy that has run and failed, and never succeeded: TimescaleDB records its
    last successful finish as -infinity."""
    with probe_rollup(probe_conn) as job_id:
        make_it_fail(probe_conn, job_id)
        yield job_id


def _probe_job(conn: psycopg.Connection[Any]) -> JobStatus:
    jobs = [j for j in rollup_health(conn).jobs if j.target == PROBE_ROLLUP]
    assert len(jobs) == 1, jobs
    return jobs[0]


def test_health_reads_a_job_that_never_succeeded(
    probe_conn: psycopg.Connection[Any], failing_job: int
) -> None:
    raw = probe_conn.execute(
        "select last_successful_finish::text from timescaledb_information.job_stats"
        " where job_id = %s",
        [failing_job],
    ).fetchone()
    assert raw == ("-infinity",)  # what the database says, on a server and embedded alike

    job = _probe_job(probe_conn)
    assert job.job_id == failing_job
    assert job.kind == "refresh"
    assert job.last_run_status == "Failed"
    assert job.last_successful_finish is None
    assert job.total_failures >= 1
    assert job.never_succeeded
    assert job.last_error is not None and PROBE_ERROR in job.last_error


def test_health_reads_a_job_rescheduled_before_its_first_run(
    probe_conn: psycopg.Connection[Any],
) -> None:
    # alter_job(next_start => ...) on a job that never ran writes its statistics row with
    # -infinity as the last start and the last successful finish
    with probe_rollup(probe_conn) as job_id:
        later = db_now(probe_conn) + timedelta(days=2)
        probe_conn.execute("select public.alter_job(%s, next_start => %s)", [job_id, later])
        raw = probe_conn.execute(
            "select last_run_started_at::text, last_successful_finish::text"
            " from timescaledb_information.job_stats where job_id = %s",
            [job_id],
        ).fetchone()
        assert raw == ("-infinity", "-infinity")

        job = _probe_job(probe_conn)
        assert job.last_run_started_at is None
        assert job.last_successful_finish is None
        assert job.next_start == later
        assert job.total_runs == 0
        assert not job.never_succeeded  # it never ran: nothing has failed


def test_status_says_the_job_never_succeeded(
    migrated_database_url: str, failing_job: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--database-url", migrated_database_url]) == 0
    out = capsys.readouterr().out
    jobs = out.split("\njobs\n")[1].split("\n\n")[0].splitlines()
    header = jobs[0]
    row = next(line for line in jobs if line.split()[0] == str(failing_job))
    column = header.index("last success")
    assert row[column:].startswith("never succeeded")
    assert f"job {failing_job} (refresh of {PROBE_ROLLUP}) has never succeeded" in out
    assert f"job {failing_job} last failed with: {PROBE_ERROR} -1" in out


def test_the_exporter_stays_up_and_exports_the_failure(
    migrated_database_url: str, failing_job: int
) -> None:
    samples = scrape(migrated_database_url)
    assert sample(samples, "observability_database_up") == 1
    labels = {"job_kind": "refresh", "target": PROBE_ROLLUP}
    failures = sample(samples, "observability_job_failures", **labels)
    assert failures is not None and failures >= 1
    assert sample(samples, "observability_job_last_run_success", **labels) == 0
    assert sample(samples, "observability_job_never_succeeded", **labels) == 1
    # the other jobs and the rollups' freshness are still exported
    healthy = {"job_kind": "refresh", "target": "observability.traces_hourly"}
    assert sample(samples, "observability_job_failures", **healthy) is not None
    assert sample(samples, "observability_job_never_succeeded", **healthy) in (None, 0)
    lag = sample(samples, "observability_rollup_lag_seconds", rollup=PROBE_ROLLUP)
    unmaterialized = sample(
        samples, "observability_rollup_unmaterialized_seconds", rollup=PROBE_ROLLUP
    )
    assert lag is None and unmaterialized is None  # never materialized, and no raw source known


def test_the_dashboard_view_and_panel_read_a_job_that_never_succeeded(
    probe_conn: psycopg.Connection[Any], failing_job: int
) -> None:
    rollup = PROBE_ROLLUP.removeprefix("observability.")
    row = probe_conn.execute(
        "select job_id, last_run_status, last_run_started_at, last_successful_finish,"
        " total_failures from observability.rollup_freshness where rollup = %s",
        [rollup],
    ).fetchone()
    assert row is not None
    job_id, status, started, finished, failures = row
    assert (job_id, status, finished) == (failing_job, "Failed", None)
    assert started is not None and failures >= 1

    panel = next(
        p for p in json.loads(PIPELINE_HEALTH.read_text())["panels"]
        if p["title"] == "Rollup freshness"
    )  # fmt: skip
    cursor = probe_conn.execute(panel["targets"][0]["rawSql"])
    names = [d.name for d in cursor.description or []]
    rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    probe = next(r for r in rows if r["rollup"] == rollup)
    assert probe["last_run_status"] == "Failed"
    assert probe["last_successful_finish"] is None
