from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.aggregation_support import aggregates, day_start, insert_traces, place
from tests.celery_support import free_port, sample, start_worker
from tests.factories import create_traces_for_aggregation
from tests.rollup_support import rows_as_dicts, wait_for
from worker.rollups import LeaseBusy, backfill_metrics
from worker.rollups import service as aggregation_service
from worker.scheduling.app import app as celery_app
from worker.scheduling.tasks import AGGREGATE_TASK, BACKFILL_TASK

aggregate_task = celery_app.tasks[AGGREGATE_TASK]
backfill_task = celery_app.tasks[BACKFILL_TASK]

pytestmark = pytest.mark.faults

HOUR = timedelta(hours=1)
# Short enough that a killed worker's lease and unacknowledged task come back within the test.
FAST_RECOVERY = {
    "OBSERVABILITY_VISIBILITY_TIMEOUT": "20",
    "OBSERVABILITY_TASK_TIME_LIMIT": "15",
    "OBSERVABILITY_LEASE_TTL": "5",
    "OBSERVABILITY_RETRY_BACKOFF_MAX": "2",
    "OBSERVABILITY_TASK_MAX_RETRIES": "20",
    "OBSERVABILITY_BATCH_BUCKETS": "6",
}


def _view(conn: psycopg.Connection, granularity: str, start: datetime, end: datetime) -> Any:
    cursor = conn.execute(
        "select bucket, metric_type, dimension_type, dimension_value, count, sum, min, max, avg,"
        " p50, p95, p99 from observability.metrics"
        " where granularity = %s and bucket >= %s and bucket < %s order by 2, 3, 4, 1",
        [granularity, start, end],
    )
    return [tuple(row.values()) for row in rows_as_dicts(cursor)]


def _table(conn: psycopg.Connection, granularity: str, start: datetime, end: datetime) -> Any:
    cursor = conn.execute(
        "select bucket_time, metric_type, dimension_type, dimension_value, count, sum_value,"
        " min_value, max_value, avg_value, p50_value, p95_value, p99_value"
        " from observability.metrics_aggregates"
        " where granularity = %s and bucket_time >= %s and bucket_time < %s order by 2, 3, 4, 1",
        [granularity, start, end],
    )
    return [tuple(row.values()) for row in rows_as_dicts(cursor)]


def _runs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return rows_as_dicts(
        conn.execute(
            "select id, kind, status, range_start, range_end, done_until, error"
            " from observability.aggregation_runs order by id"
        )
    )


def _workload(conn: psycopg.Connection, start: datetime, hours: int, per_hour: int = 6) -> None:
    traces = create_traces_for_aggregation(count=hours * per_hour)
    insert_traces(conn, place(traces, start + timedelta(minutes=3), HOUR / per_hour))


def test_worker_killed_mid_sync_and_the_redelivered_task_finishes_the_job(
    tmp_path: Path, celery_broker: str, agg_conn: psycopg.Connection
) -> None:
    start = day_start(12)
    end = start + timedelta(days=3)
    _workload(agg_conn, start, 72)
    worker = start_worker(tmp_path, agg_conn.info.dsn, extra_env=FAST_RECOVERY)
    try:
        result = backfill_task.apply_async(args=(start.isoformat(), end.isoformat(), "hour"))
        # Kill it once some batches are committed and others are not.
        assert wait_for(
            lambda: any(
                r["status"] == "running" and start < r["done_until"] < end for r in _runs(agg_conn)
            ),
            timeout=120,
            interval=0.05,
        ), _runs(agg_conn)
        worker.kill()
    finally:
        worker.stop()
    killed = _runs(agg_conn)[-1]
    assert killed["status"] == "running" and start < killed["done_until"] < end
    partial = _table(agg_conn, "hour", start, end)
    assert partial, "the killed run had committed its first batches"

    # A new worker gets the unacknowledged task back from Redis, waits out the dead worker's
    # lease, resumes from done_until and finishes.
    replacement = start_worker(tmp_path, agg_conn.info.dsn, extra_env=FAST_RECOVERY)
    try:
        summary = result.get(timeout=180)
    finally:
        replacement.stop()
    assert summary["resumed_from"] is not None
    assert datetime.fromisoformat(summary["resumed_from"]) >= killed["done_until"]
    runs = _runs(agg_conn)
    assert [r["status"] for r in runs] == ["interrupted", "succeeded"]
    assert runs[-1]["done_until"] == end
    # exactly the rows an undisturbed run leaves: the rollups' rows for the range, once each
    assert _table(agg_conn, "hour", start, end) == _view(agg_conn, "hour", start, end)


def test_database_unreachable_retries_then_fails_visibly(
    tmp_path: Path, celery_broker: str, agg_conn: psycopg.Connection
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    worker = start_worker(
        tmp_path,
        closed,
        extra_env={"OBSERVABILITY_TASK_MAX_RETRIES": "2", "OBSERVABILITY_RETRY_BACKOFF_MAX": "1"},
    )
    try:
        result = aggregate_task.apply_async(args=("hour",))
        with pytest.raises(psycopg.OperationalError):
            result.get(timeout=120)
        assert result.state == "FAILURE"
        # Celery stores the failure, then calls on_failure, which counts it: wait for that
        failed = "observability_aggregation_task_failures_total"
        wait_for(lambda: sample(worker.scrape(), failed, granularity="hour") == 1, timeout=20)
        samples = worker.scrape()
        log = worker.log()
    finally:
        worker.stop()
    # the first attempt and two retries, each counted as a failure; no success recorded
    name = "observability_aggregation_duration_seconds_count"
    assert sample(samples, name, granularity="hour", outcome="failure") == 3
    assert sample(samples, name, granularity="hour", outcome="success") == 0
    assert sample(samples, "observability_aggregation_last_success", granularity="hour") is None
    assert sample(samples, "observability_database_up") == 0
    assert sample(samples, "observability_aggregation_task_failures_total", granularity="hour") == 1
    assert log.count("Retry in") == 2
    assert aggregates(agg_conn) == []


def test_a_failed_batch_leaves_earlier_batches_and_resume_completes(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = day_start(11)
    end = start + timedelta(days=4)  # two batches: 72 hours, then 24
    _workload(agg_conn, start, 96, per_hour=2)
    real_sync = aggregation_service.sync_window
    calls = []

    def failing_second_batch(conn: psycopg.Connection, batch: Any) -> Any:
        calls.append(batch)
        if len(calls) == 2:
            # A fault we cannot provoke on demand: the connection drops mid-batch.
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_sync(conn, batch)

    monkeypatch.setattr(aggregation_service, "sync_window", failing_second_batch)
    with pytest.raises(psycopg.OperationalError):
        backfill_metrics(start, end, "hour", database_url=agg_conn.info.dsn)
    first_batch_end = start + 72 * HOUR
    failed = _runs(agg_conn)[-1]
    assert (failed["status"], failed["done_until"]) == ("failed", first_batch_end)
    assert "server closed the connection" in failed["error"]
    # the first batch is complete, the second untouched: nothing half-written
    assert _table(agg_conn, "hour", start, first_batch_end) == _view(
        agg_conn, "hour", start, first_batch_end
    )
    assert _table(agg_conn, "hour", first_batch_end, end) == []

    monkeypatch.setattr(aggregation_service, "sync_window", real_sync)
    summary = backfill_metrics(start, end, "hour", database_url=agg_conn.info.dsn, resume=True)
    assert summary["resumed_from"] == first_batch_end.isoformat()
    assert summary["buckets"] == 24
    assert _table(agg_conn, "hour", start, end) == _view(agg_conn, "hour", start, end)


def test_the_same_task_delivered_twice(
    tmp_path: Path, celery_broker: str, agg_conn: psycopg.Connection
) -> None:
    start = day_start(10) + 2 * HOUR
    end = start + 12 * HOUR
    _workload(agg_conn, start, 12)
    worker = start_worker(
        tmp_path,
        agg_conn.info.dsn,
        concurrency=2,
        extra_env={"OBSERVABILITY_RETRY_BACKOFF_MAX": "2", "OBSERVABILITY_TASK_MAX_RETRIES": "20"},
    )
    args = ("hour", start.isoformat(), end.isoformat())
    try:
        # Two deliveries of one message at once (a redelivery racing the original): one holds
        # the lease, the other is told to retry and then finds nothing left to change.
        first, second = (aggregate_task.apply_async(args=args) for _ in range(2))
        summaries = [first.get(timeout=180), second.get(timeout=180)]
        third = aggregate_task.apply_async(args=args).get(timeout=180)
    finally:
        worker.stop()
    created = sorted(s["metrics_created"] for s in summaries)
    assert created[0] == 0 and created[1] > 0
    assert (third["metrics_created"], third["metrics_updated"]) == (0, 0)
    assert _table(agg_conn, "hour", start, end) == _view(agg_conn, "hour", start, end)
    assert len(_table(agg_conn, "hour", start, end)) == created[1]


def test_overlapping_backfills_skip_or_wait(agg_conn: psycopg.Connection) -> None:
    start = day_start(13)
    end = start + timedelta(days=4)
    _workload(agg_conn, start, 96, per_hour=1)
    url = agg_conn.info.dsn
    first_batch_done = threading.Event()
    release = threading.Event()
    outcome: dict[str, Any] = {}

    def hold(batch: Any, counts: Any) -> None:
        first_batch_done.set()
        release.wait(60)

    def first() -> None:
        outcome["first"] = backfill_metrics(start, end, "hour", database_url=url, progress=hold)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_batch_done.wait(60)
        # an overlapping backfill of the same granularity gives up at once by default...
        with pytest.raises(LeaseBusy, match="aggregation:hour is held by"):
            backfill_metrics(start + timedelta(days=1), end, "hour", database_url=url)
        # ...or waits for the first one when asked to
        waiter: dict[str, Any] = {}
        second = threading.Thread(
            target=lambda: waiter.update(
                result=backfill_metrics(
                    start + timedelta(days=1), end, "hour", database_url=url, wait_seconds=120
                )
            )
        )
        second.start()
        time.sleep(1.5)
        assert second.is_alive()  # still waiting for the lease
    finally:
        release.set()
        thread.join(120)
    second.join(120)
    assert outcome["first"]["buckets"] == 96
    assert waiter["result"]["metrics_created"] == 0  # the first had synced everything
    assert _table(agg_conn, "hour", start, end) == _view(agg_conn, "hour", start, end)
    assert [r["status"] for r in _runs(agg_conn)] == ["succeeded", "succeeded"]


def test_a_concurrent_refresh_is_waited_out(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = day_start(12) + 6 * HOUR
    _workload(agg_conn, start, 3)
    real_refresh = aggregation_service.refresh_rollups
    attempts = []

    def busy_twice(conn: psycopg.Connection, batch: Any, **options: Any) -> None:
        attempts.append(batch)
        if len(attempts) <= 2:
            # TimescaleDB's answer while another session refreshes the same rollup (55P03);
            # the embedded engine runs one statement at a time, so it cannot happen there.
            raise aggregation_service.ConcurrentRefresh("due to a concurrent refresh")
        real_refresh(conn, batch, **options)

    monkeypatch.setattr(aggregation_service, "refresh_rollups", busy_twice)
    monkeypatch.setattr(aggregation_service.time, "sleep", lambda seconds: None)
    summary = backfill_metrics(start, start + 3 * HOUR, "hour", database_url=agg_conn.info.dsn)
    assert len(attempts) == 3
    assert summary["metrics_created"] > 0
