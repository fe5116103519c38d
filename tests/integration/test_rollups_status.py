from __future__ import annotations

import psycopg
import pytest

from tests.rollup_support import ROLLUPS, rollup_conn, sketch_schema
from worker.cli.main import main
from worker.monitoring.health import rollup_health

__all__ = ["rollup_conn"]


def test_health_names_the_sketch_rollups_and_jobs(rollup_conn: psycopg.Connection) -> None:
    health = rollup_health(rollup_conn)
    assert health.sketch is not None
    assert health.sketch.function_schema == sketch_schema(rollup_conn)
    assert health.sketch.implementation in ("observability", "timescaledb_toolkit")
    assert [r.name for r in health.rollups] == sorted(
        ROLLUPS,
        key=lambda n: (
            n.rpartition("_")[0],
            ("hourly", "daily", "weekly").index(n.rpartition("_")[2]),
        ),
    )
    widths = {r.name.rpartition("_")[2]: r.bucket_width for r in health.rollups}
    assert widths == {"hourly": "01:00:00", "daily": "1 day", "weekly": "7 days"}
    assert all(r.real_time for r in health.rollups)
    for rollup in health.rollups:
        if rollup.watermark is not None:
            assert rollup.lag == health.checked_at - rollup.watermark
    kinds = sorted((j.kind, j.target) for j in health.jobs)
    assert kinds == sorted(
        [("refresh", name) for name in ROLLUPS]
        + [
            (kind, f"observability.{t}")
            for kind in ("compression", "retention")
            for t in ("traces", "spans", "span_events", "document_events")
        ]
    )
    assert all(j.scheduled and j.total_failures == 0 for j in health.jobs)


def test_status_command(migrated_database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--database-url", migrated_database_url]) == 0
    out = capsys.readouterr().out
    assert "percentile sketch:" in out
    for name in ROLLUPS:
        assert name in out
    assert "window 3 days .. 00:00:00 ago" in out
    assert "drop after 30 days" in out and "after 2 days" in out


def test_status_command_without_a_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["status"]) == 2
