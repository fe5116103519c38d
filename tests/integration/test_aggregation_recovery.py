from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from tests.aggregation_support import aggregates, day_start, insert_traces, place
from tests.celery_support import ROOT
from tests.factories import create_traces_for_aggregation
from worker.rollups import (
    LeaseBusy,
    RangeBeyondRetention,
    aggregate_observability_metrics,
    backfill_metrics,
)
from worker.rollups import service as aggregation_service
from worker.rollups.leases import acquire

HOUR = timedelta(hours=1)


def _this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _traces(conn: psycopg.Connection, start: datetime, count: int, step: timedelta) -> None:
    insert_traces(conn, place(create_traces_for_aggregation(count=count), start, step))


def _overall_counts(conn: psycopg.Connection, granularity: str = "hour") -> dict[datetime, int]:
    rows = aggregates(
        conn, granularity=granularity, metric_type="trace.duration_ms", dimension_type="overall"
    )
    return {r["bucket_time"]: r["count"] for r in rows}


def _record_scheduled_success(conn: psycopg.Connection, granularity: str, end: datetime) -> None:
    conn.execute(
        "insert into observability.aggregation_runs (kind, granularity, range_start, range_end,"
        " done_until, status, finished_at) values ('scheduled', %s, %s, %s, %s, 'succeeded',"
        " now())",
        [granularity, end - 2 * HOUR, end, end],
    )


def test_a_scheduled_run_catches_up_from_the_last_successful_one(
    agg_conn: psycopg.Connection,
) -> None:
    now = _this_hour()
    _traces(agg_conn, now - 6 * HOUR, 12, HOUR / 2)  # two traces in each of the last 6 hours
    # The last successful run synced up to 6 hours ago; the runs since then failed.
    _record_scheduled_success(agg_conn, "hour", now - 6 * HOUR)
    summary = aggregate_observability_metrics("hour", database_url=agg_conn.info.dsn)
    assert summary["window"]["start"] == (now - 6 * HOUR).isoformat()
    assert summary["buckets"] == 6
    assert _overall_counts(agg_conn) == {now - i * HOUR: 2 for i in range(1, 7)}


def test_catching_up_is_capped(agg_conn: psycopg.Connection) -> None:
    now = _this_hour()
    _record_scheduled_success(agg_conn, "hour", now - timedelta(days=20))
    summary = aggregate_observability_metrics("hour", database_url=agg_conn.info.dsn)
    assert summary["buckets"] == 7 * 24  # the rest is left to a backfill


def test_only_scheduled_runs_move_the_last_success_gauge(agg_conn: psycopg.Connection) -> None:
    def last_success() -> float | None:
        return REGISTRY.get_sample_value(
            "observability_aggregation_last_success", {"granularity": "day"}
        )

    before = last_success()
    start = day_start(9)
    backfill_metrics(start, start + timedelta(days=1), "day", database_url=agg_conn.info.dsn)
    assert last_success() == before
    aggregate_observability_metrics("day", database_url=agg_conn.info.dsn)
    after = last_success()
    assert after is not None and abs(after - time.time()) < 60


def test_resume_continues_only_the_latest_unfinished_backfill(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = day_start(9)
    end = start + timedelta(days=4)
    url = agg_conn.info.dsn
    _traces(agg_conn, start + timedelta(minutes=10), 96, HOUR)
    real_sync = aggregation_service.sync_window
    calls: list[Any] = []

    def fail_second_batch(conn: psycopg.Connection, batch: Any) -> Any:
        calls.append(batch)
        if len(calls) == 2:
            raise psycopg.OperationalError("connection lost")
        return real_sync(conn, batch)

    monkeypatch.setattr(aggregation_service, "sync_window", fail_second_batch)
    with pytest.raises(psycopg.OperationalError):
        backfill_metrics(start, end, "hour", database_url=url)
    monkeypatch.setattr(aggregation_service, "sync_window", real_sync)
    resumed = backfill_metrics(start, end, "hour", database_url=url, resume=True)
    assert resumed["resumed_from"] is not None

    # rows arrive late in the first day, which the resumed run had skipped
    _traces(agg_conn, start + timedelta(minutes=40), 5, HOUR)
    again = backfill_metrics(start, end, "hour", database_url=url, resume=True)
    assert again["resumed_from"] is None  # the latest run finished: nothing to resume
    assert again["buckets"] == 96 and again["metrics_updated"] > 0
    assert _overall_counts(agg_conn)[start] == 2


def test_a_second_delivery_of_a_task_waits_for_its_lease(agg_conn: psycopg.Connection) -> None:
    ttl = timedelta(minutes=10)
    acquire(agg_conn, "aggregation:week", ttl, holder="live-host:1:a", task_id="task-1")
    # the first delivery may still be running: the same task id gets no pass
    with pytest.raises(LeaseBusy):
        acquire(agg_conn, "aggregation:week", ttl, holder="new-host:3:c", task_id="task-1")
    # its worker died: the lease is not renewed and expires, then the redelivery takes it
    agg_conn.execute(
        "update observability.worker_leases set acquired_at = now() - interval '2 minutes',"
        " expires_at = now() - interval '1 second' where name = 'aggregation:week'"
    )
    lease = acquire(agg_conn, "aggregation:week", ttl, holder="new-host:3:c", task_id="task-1")
    row = agg_conn.execute(
        "select holder from observability.worker_leases where name = 'aggregation:week'"
    ).fetchone()
    assert row == ("new-host:3:c",)
    lease.release()


def test_lease_busy_reaches_a_celery_caller_intact() -> None:
    busy = LeaseBusy("aggregation:hour", "host:1:x", datetime(2026, 1, 1, tzinfo=UTC))
    copy = pickle.loads(pickle.dumps(busy))
    assert isinstance(copy, LeaseBusy)
    assert str(copy) == str(busy) and copy.holder == "host:1:x"


def test_the_lease_stays_held_through_a_batch_longer_than_its_ttl(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVABILITY_LEASE_TTL", "5")
    real_sync = aggregation_service.sync_window

    def slow_sync(conn: psycopg.Connection, batch: Any) -> Any:
        time.sleep(8)
        return real_sync(conn, batch)

    monkeypatch.setattr(aggregation_service, "sync_window", slow_sync)
    start = day_start(8)
    outcome: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            summary=backfill_metrics(start, start + HOUR, "hour", database_url=agg_conn.info.dsn)
        )
    )
    worker.start()
    time.sleep(6.5)  # past the time to live: only the heartbeat keeps the lease
    with pytest.raises(LeaseBusy):
        acquire(agg_conn, "aggregation:hour", timedelta(seconds=5))
    worker.join(30)
    assert outcome["summary"]["buckets"] == 1


def test_week_runs_work_with_a_short_raw_retention(agg_conn: psycopg.Connection) -> None:
    agg_conn.execute("select observability.apply_raw_data_policies('10 days', '2 days')")
    try:
        summary = aggregate_observability_metrics("week", database_url=agg_conn.info.dsn)
        assert summary["buckets"] == 2
        with pytest.raises(RangeBeyondRetention):
            backfill_metrics(day_start(12), day_start(11), "hour", database_url=agg_conn.info.dsn)
    finally:
        agg_conn.execute("select observability.apply_raw_data_policies('30 days', '2 days')")


def test_a_missing_metrics_directory_does_not_fail_the_backfill_command(
    agg_conn: psycopg.Connection, tmp_path: Path
) -> None:
    start = day_start(5)
    result = subprocess.run(
        [
            sys.executable, "-m", "worker", "backfill", "--database-url", agg_conn.info.dsn,
            "--from", start.isoformat(), "--to", (start + HOUR).isoformat(),
            "--granularity", "hour",
        ],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "backfilled 1 hour buckets" in result.stdout


def test_open_buckets_are_synced_but_never_materialized(agg_conn: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    today = day_start(0)
    _traces(agg_conn, now - timedelta(minutes=2), 1, HOUR)
    summary = backfill_metrics(
        today - timedelta(days=1), now, "day", database_url=agg_conn.info.dsn
    )
    assert summary["window"]["end"] == (today + timedelta(days=1)).isoformat()
    assert _overall_counts(agg_conn, "day")[today] == 1  # today as it stands, synced
    materialized_up_to_today = agg_conn.execute(
        "select _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(h.id))"
        " <= %s from _timescaledb_catalog.hypertable as h"
        " join timescaledb_information.continuous_aggregates as c"
        "   on c.materialization_hypertable_name = h.table_name"
        " where c.view_name = 'traces_daily'",
        [today],
    ).fetchone()
    assert materialized_up_to_today == (True,)
    # so today's later rows still reach the daily rollup, through real-time aggregation
    _traces(agg_conn, now - timedelta(minutes=1), 1, HOUR)
    row = agg_conn.execute(
        "select count from observability.metrics where granularity = 'day' and bucket = %s"
        " and metric_type = 'trace.duration_ms' and dimension_type = 'overall'",
        [today],
    ).fetchone()
    assert row == (2,)
