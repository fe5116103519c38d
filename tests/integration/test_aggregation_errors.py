from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.aggregation_support import aggregates, day_start, insert_traces, place
from tests.celery_support import ROOT
from tests.factories import create_traces_for_aggregation
from worker.rollups import (
    InvalidWindow,
    RangeBeyondRetention,
    aggregate_observability_metrics,
    backfill_metrics,
)
from worker.rollups.leases import acquire

HOUR = timedelta(hours=1)


def _runs(conn: psycopg.Connection) -> int:
    row = conn.execute("select count(*) from observability.aggregation_runs").fetchone()
    return int(row[0]) if row else 0


def cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args, "--database-url", url],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_a_window_beyond_raw_retention_is_refused_and_nothing_runs(
    agg_conn: psycopg.Connection,
) -> None:
    start = datetime.now(UTC) - timedelta(days=45)
    expected = r"retention horizon .*T00:00:00\+00:00 \(30 days, whole chunks\)"
    with pytest.raises(RangeBeyondRetention, match=expected):
        backfill_metrics(start, start + timedelta(days=2), "hour", database_url=agg_conn.info.dsn)
    assert _runs(agg_conn) == 0


def test_thirty_days_of_whole_hours_are_within_retention(agg_conn: psycopg.Connection) -> None:
    # the chunk holding the horizon is whole, so the last 30 days of hours can be backfilled
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    summary = backfill_metrics(
        end - timedelta(days=30), end, "hour", database_url=agg_conn.info.dsn
    )
    assert summary["buckets"] == 720


def test_start_without_end_is_refused(agg_conn: psycopg.Connection) -> None:
    with pytest.raises(InvalidWindow, match="both start and end, or neither"):
        aggregate_observability_metrics("hour", start=day_start(2), database_url=agg_conn.info.dsn)


def test_unknown_granularity_is_refused_before_connecting() -> None:
    with pytest.raises(InvalidWindow, match="unknown granularity 'minute'"):
        aggregate_observability_metrics("minute", database_url="postgresql://nowhere:1/x")


def test_rows_whose_source_is_gone_are_deleted_on_the_next_sync(
    agg_conn: psycopg.Connection,
) -> None:
    start = day_start(6) + 3 * HOUR
    traces = place(create_traces_for_aggregation(count=4, operation_type="chat"), start, HOUR / 4)
    insert_traces(agg_conn, traces)
    url = agg_conn.info.dsn
    aggregate_observability_metrics("hour", start, start + HOUR, database_url=url)
    assert aggregates(agg_conn, dimension_type="operation_type", dimension_value="chat")
    # the raw rows are deleted (say, by an operator removing test traffic): the next sync
    # removes the rolled-up rows too, instead of keeping numbers nothing supports
    agg_conn.execute("delete from observability.traces where started_at >= %s", [start])
    summary = aggregate_observability_metrics("hour", start, start + HOUR, database_url=url)
    assert summary["metrics_deleted"] > 0
    assert aggregates(agg_conn) == []


def test_late_rows_before_the_default_window_are_caught_by_a_backfill(
    agg_conn: psycopg.Connection,
) -> None:
    start = day_start(3) + 8 * HOUR
    url = agg_conn.info.dsn
    insert_traces(agg_conn, place(create_traces_for_aggregation(count=3), start, HOUR / 3))
    backfill_metrics(start, start + 2 * HOUR, "hour", database_url=url)
    late = place(create_traces_for_aggregation(count=2), start + timedelta(minutes=50), HOUR)
    insert_traces(agg_conn, late)  # one lands in the synced hour, one in the next
    summary = backfill_metrics(start, start + 2 * HOUR, "hour", database_url=url)
    assert summary["metrics_updated"] > 0 and summary["metrics_created"] > 0
    overall = aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall")
    assert [(r["bucket_time"], r["count"]) for r in overall] == [
        (start, 4),
        (start + HOUR, 1),
    ]


def test_backfill_command_syncs_and_reports(agg_conn: psycopg.Connection) -> None:
    start = day_start(4)
    insert_traces(agg_conn, place(create_traces_for_aggregation(count=8), start, 3 * HOUR))
    result = cli(
        "backfill",
        "--from",
        start.date().isoformat(),
        "--to",
        (start + timedelta(days=1)).isoformat(),
        "--granularity",
        "day",
        url=agg_conn.info.dsn,
    )
    assert result.returncode == 0, result.stderr
    assert "backfilled 1 day buckets" in result.stdout
    assert "backfill day" in result.stderr  # the progress bar
    rows = aggregates(agg_conn, granularity="day", metric_type="trace.duration_ms")
    assert {
        (r["dimension_type"], r["count"]) for r in rows if r["dimension_type"] == "overall"
    } == {("overall", 8)}

    status = cli("status", url=agg_conn.info.dsn)
    assert status.returncode == 0, status.stderr
    worker_lines = status.stdout.split("aggregation worker (metrics_aggregates)")[1]
    day_line = next(line for line in worker_lines.splitlines() if line.strip().startswith("day"))
    assert "backfill" in day_line and "succeeded" in day_line
    week_line = next(line for line in worker_lines.splitlines() if line.strip().startswith("week"))
    assert "never" in week_line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "yesterday", "--to", "2026-01-02"), "not an ISO 8601 date or time"),
        (("--from", "2026-01-02", "--to", "2026-01-01"), "ends before it starts"),
    ],
)
def test_backfill_command_rejects_bad_ranges(
    agg_conn: psycopg.Connection, args: tuple[str, ...], message: str
) -> None:
    result = cli("backfill", *args, "--granularity", "hour", url=agg_conn.info.dsn)
    assert result.returncode == 2
    assert message in result.stderr
    assert _runs(agg_conn) == 0


def test_backfill_command_rejects_unknown_granularity(agg_conn: psycopg.Connection) -> None:
    result = cli(
        "backfill", "--from", "2026-01-01", "--to", "2026-01-02", "--granularity", "minute",
        url=agg_conn.info.dsn,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown granularity 'minute': expected one of hour, day, week" in result.stderr


def test_backfill_command_gives_up_cleanly_while_another_holds_the_granularity(
    agg_conn: psycopg.Connection,
) -> None:
    start = day_start(5)
    with acquire(agg_conn, "aggregation:hour", timedelta(minutes=5), holder="elsewhere:1:x"):
        result = cli(
            "backfill", "--from", start.isoformat(), "--to", (start + HOUR).isoformat(),
            "--granularity", "hour", url=agg_conn.info.dsn,
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "another aggregation run of this granularity is under way" in result.stderr
    assert "aggregation:hour is held by elsewhere:1:x" in result.stderr
    assert _runs(agg_conn) == 0


def test_an_expired_lease_is_taken_over(agg_conn: psycopg.Connection) -> None:
    agg_conn.execute(
        "insert into observability.worker_leases (name, holder, acquired_at, expires_at)"
        " values ('aggregation:day', 'dead:1:x', now() - interval '1 hour',"
        " now() - interval '1 minute')"
    )
    lease = acquire(agg_conn, "aggregation:day", timedelta(minutes=1))
    row: Any = agg_conn.execute(
        "select holder from observability.worker_leases where name = 'aggregation:day'"
    ).fetchone()
    assert row[0] == lease.holder != "dead:1:x"
    lease.release()
    assert agg_conn.execute("select count(*) from observability.worker_leases").fetchone() == (0,)


def test_force_rematerializes_buckets_whose_raw_rows_did_not_change(
    agg_conn: psycopg.Connection,
) -> None:
    start = day_start(7) + 4 * HOUR
    insert_traces(agg_conn, place(create_traces_for_aggregation(count=3), start, HOUR / 3))
    url = agg_conn.info.dsn
    summary = backfill_metrics(start, start + HOUR, "hour", database_url=url, force=True)
    assert summary["metrics_created"] > 0
    overall = aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall")
    assert [r["count"] for r in overall] == [3]
