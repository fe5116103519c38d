from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.observability_db import reset_to_head
from worker.cli.main import main
from worker.schema import server_check
from worker.schema.migrate import current_revision, downgrade
from worker.schema.server_check import (
    MINIMUM_TIMESCALEDB,
    PROJECT_JOBS,
    JobRuns,
    ServerFacts,
    check_server,
    evaluate,
    parse_version,
    read_facts,
)


@pytest.fixture
def url(migrated_database_url: str) -> Iterator[str]:
    yield migrated_database_url
    reset_to_head(migrated_database_url)


def _facts(url: str) -> ServerFacts:
    with psycopg.connect(url, autocommit=True) as conn:
        return read_facts(conn)


def _schema_exists(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select count(*) from pg_namespace where nspname = 'observability'")
        return row.fetchone() == (1,)


def test_the_test_server_is_supported(migrated_database_url: str) -> None:
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        report = check_server(conn)
    facts = report.facts
    assert facts.timescaledb_installed
    assert parse_version(facts.timescaledb_version or "") >= MINIMUM_TIMESCALEDB
    assert facts.license == "timescale"
    assert not report.refused, report.lines()
    assert report.lines()[0] == report.headline()


def test_project_jobs_matches_a_migrated_database(migrated_database_url: str) -> None:
    assert _facts(migrated_database_url).runs.jobs == PROJECT_JOBS


def test_versions_parse() -> None:
    assert parse_version("2.23.0-dev") == (2, 23, 0)
    assert parse_version("2.23.1") == (2, 23, 1)
    assert parse_version("2.9") == (2, 9, 0)
    with pytest.raises(ValueError, match="not a TimescaleDB version"):
        parse_version("dev")


def _fake(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """The real server's facts with some replaced: an old or Apache-only server cannot be had."""
    real = server_check.read_facts

    def faked(conn: psycopg.Connection[Any], schema: str = "observability") -> ServerFacts:
        return dataclasses.replace(real(conn, schema), **changes)

    monkeypatch.setattr(server_check, "read_facts", faked)


def test_migrate_refuses_an_old_timescaledb_and_installs_nothing(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    downgrade(url, "base")
    _fake(monkeypatch, timescaledb_version="2.17.2", timescaledb_installed=False)
    assert main(["migrate", "--database-url", url]) == 1
    assert "TimescaleDB 2.17.2 is available on this server" in caplog.text
    assert "needs TimescaleDB >= 2.23.0" in caplog.text
    assert "refusing to migrate" in caplog.text
    assert current_revision(url) is None
    assert not _schema_exists(url)


def test_migrate_refuses_the_apache_license(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    downgrade(url, "base")
    _fake(monkeypatch, license="apache")
    assert main(["migrate", "--database-url", url]) == 1
    assert "timescaledb.license is 'apache'" in caplog.text
    assert "continuous aggregates" in caplog.text
    assert not _schema_exists(url)


def test_migrate_refuses_a_server_without_timescaledb(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    downgrade(url, "base")
    _fake(monkeypatch, timescaledb_version=None, timescaledb_installed=False, license=None)
    assert main(["migrate", "--database-url", url]) == 1
    assert "TimescaleDB is not available on this server" in caplog.text


def test_migrate_prints_the_server_check_and_goes_on(
    migrated_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--database-url", migrated_database_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(("server: TimescaleDB ", "SERVER WARNING: ")), out[:3]
    assert "alembic revision: 0001" in out


def _server(**changes: Any) -> ServerFacts:
    facts = ServerFacts(
        postgres_version="17.7",
        timescaledb_version="2.23.1",
        timescaledb_installed=True,
        license="timescale",
        max_background_workers=32,
        max_worker_processes=48,
        max_parallel_workers=8,
        launcher_running=True,
        schedulers=2,
        all_jobs=18,
        runs=JobRuns(16, 16, 0),
    )
    return dataclasses.replace(facts, **changes)


def test_the_compose_budget_passes_and_the_default_does_not() -> None:
    assert evaluate(_server()) == []
    small = evaluate(_server(max_background_workers=16, max_worker_processes=24))
    assert [f.level for f in small] == ["warning", "warning"]
    assert "need 20 to run at once" in small[0].message
    assert "max_worker_processes is 24" in small[1].message


def test_every_job_failing_is_an_error_but_does_not_block_a_migration() -> None:
    findings = evaluate(_server(runs=JobRuns(16, 13, 13, "job 1000 failed")))
    assert findings[0].level == "error" and not findings[0].blocks_install
    assert "every database-side job is failing" in findings[0].message
    assert "latest error: job 1000 failed" in findings[0].message
    assert evaluate(_server(runs=JobRuns(16, 13, 12))) == []
    assert evaluate(_server(runs=JobRuns(16, 0, 0))) == []


def test_no_background_workers_is_said() -> None:
    embedded = evaluate(_server(launcher_running=False, max_background_workers=None))
    assert [f.level for f in embedded] == ["note"]
    disabled = evaluate(_server(launcher_running=False))
    assert [f.level for f in disabled] == ["warning"]
    assert "policies never run by themselves" in disabled[0].message
