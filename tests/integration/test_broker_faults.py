from __future__ import annotations

import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.aggregation_support import day_start, insert_traces, place
from tests.celery_support import celery_client, sample, start_worker
from tests.factories import create_traces_for_aggregation
from tests.redis_server import RedisServer
from tests.rollup_support import rows_as_dicts, wait_for

pytestmark = pytest.mark.faults

HOUR = timedelta(hours=1)
BACKFILL = "worker.tasks.backfill_observability_metrics"
AGGREGATE = "worker.tasks.aggregate_observability_metrics"
# Short enough that a task whose acknowledgement was lost comes back within the test.
FAST = {
    "OBSERVABILITY_VISIBILITY_TIMEOUT": "20",
    "OBSERVABILITY_TASK_TIME_LIMIT": "15",
    "OBSERVABILITY_LEASE_TTL": "5",
    "OBSERVABILITY_RETRY_BACKOFF_MAX": "2",
    "OBSERVABILITY_TASK_MAX_RETRIES": "20",
    "OBSERVABILITY_BATCH_BUCKETS": "2",
}


def _runs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return rows_as_dicts(
        conn.execute(
            "select id, kind, status, done_until, error from observability.aggregation_runs"
            " order by id"
        )
    )


def _mismatches(conn: psycopg.Connection, start: Any, end: Any) -> int:
    row = conn.execute(
        "select count(*) from ((select bucket, metric_type, dimension_type, dimension_value,"
        " count, sum, p95 from observability.metrics where granularity = 'hour'"
        " and bucket >= %(s)s and bucket < %(e)s"
        " except all select bucket_time, metric_type, dimension_type, dimension_value, count,"
        " sum_value, p95_value from observability.metrics_aggregates where granularity = 'hour'"
        " and bucket_time >= %(s)s and bucket_time < %(e)s) union all"
        " (select bucket_time, metric_type, dimension_type, dimension_value, count, sum_value,"
        " p95_value from observability.metrics_aggregates where granularity = 'hour'"
        " and bucket_time >= %(s)s and bucket_time < %(e)s except all"
        " select bucket, metric_type, dimension_type, dimension_value, count, sum, p95"
        " from observability.metrics where granularity = 'hour'"
        " and bucket >= %(s)s and bucket < %(e)s)) as d",
        {"s": start, "e": end},
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_redis_lost_under_a_running_task(
    tmp_path: Path,
    private_redis: RedisServer,
    agg_conn: psycopg.Connection,
    how: signal.Signals,
) -> None:
    start = day_start(12)
    end = start + 48 * HOUR
    traces = create_traces_for_aggregation(count=48 * 4)
    insert_traces(agg_conn, place(traces, start + timedelta(minutes=4), HOUR / 4))
    env = {
        **FAST,
        "CELERY_BROKER_URL": private_redis.url,
        "CELERY_RESULT_BACKEND": private_redis.url,
    }
    # as deployed: gossip, mingle and heartbeats on (their channels are restored on reconnect)
    worker = start_worker(tmp_path, agg_conn.info.dsn, extra_env=env, options=())
    try:
        result = celery_client(private_redis.url).send_task(
            BACKFILL, args=(start.isoformat(), end.isoformat(), "hour")
        )
        assert wait_for(
            lambda: any(r["status"] == "running" for r in _runs(agg_conn)),
            timeout=120,
            interval=0.05,
        ), worker.log()
        private_redis.stop(how)
        time.sleep(3)
        assert worker.process.poll() is None, worker.log()
        private_redis.start()
        back = time.monotonic()
        summary = result.get(timeout=120)
        recovered = time.monotonic() - back
        assert worker.process.poll() is None, worker.log()
        # the worker reconnected and takes new work
        again = celery_client(private_redis.url).send_task(AGGREGATE, args=("week",))
        again.get(timeout=120)
        samples = worker.scrape()
        log = worker.log()
    finally:
        worker.stop()
    print(f"Redis {how.name}: result {recovered:.1f} s after Redis was back")
    assert "Unrecoverable error" not in log and "CRITICAL" not in log
    assert summary["window"]["end"] == end.isoformat()
    assert _runs(agg_conn)[0]["status"] == "succeeded"
    assert sample(samples, "observability_aggregation_task_failures_total", granularity="hour") == 0
    assert _mismatches(agg_conn, start, end) == 0


def test_one_task_delivered_twice_runs_once_and_is_not_a_failure(
    tmp_path: Path, private_redis: RedisServer, agg_conn: psycopg.Connection
) -> None:
    start = day_start(10) + 2 * HOUR
    end = start + 24 * HOUR
    traces = create_traces_for_aggregation(count=24 * 4)
    insert_traces(agg_conn, place(traces, start + timedelta(minutes=4), HOUR / 4))
    env = {
        **FAST,
        "CELERY_BROKER_URL": private_redis.url,
        "CELERY_RESULT_BACKEND": private_redis.url,
    }
    worker = start_worker(tmp_path, agg_conn.info.dsn, concurrency=2, extra_env=env)
    task_id = str(uuid.uuid4())
    client = celery_client(private_redis.url)
    args = ("hour", start.isoformat(), end.isoformat())
    try:
        # two deliveries of one message (a redelivery racing the original)
        first = client.send_task(AGGREGATE, args=args, task_id=task_id)
        client.send_task(AGGREGATE, args=args, task_id=task_id)
        summary = first.get(timeout=180)
        # the second delivery has finished too: retried while the first held the lease, then
        # returned the first one's result
        assert wait_for(lambda: worker.log().count("succeeded in") >= 2, timeout=120), worker.log()
        samples = worker.scrape()
    finally:
        worker.stop()
    runs = _runs(agg_conn)
    assert [r["status"] for r in runs] == ["succeeded"], runs  # never two runs at once
    assert summary["metrics_created"] > 0
    failures = sample(samples, "observability_aggregation_task_failures_total", granularity="hour")
    assert failures == 0
    count = "observability_aggregation_duration_seconds_count"
    assert sample(samples, count, granularity="hour", outcome="failure") == 0
    assert _mismatches(agg_conn, start, end) == 0


def test_a_backfill_stopped_by_its_time_limit_resumes(
    tmp_path: Path, private_redis: RedisServer, agg_conn: psycopg.Connection
) -> None:
    start = day_start(21)
    end = start + 20 * 24 * HOUR  # hundreds of one-hour batches: several time limits' worth
    traces = create_traces_for_aggregation(count=20 * 24)
    insert_traces(agg_conn, place(traces, start + timedelta(minutes=4), HOUR))
    env = {
        **FAST,
        "CELERY_BROKER_URL": private_redis.url,
        "CELERY_RESULT_BACKEND": private_redis.url,
        "OBSERVABILITY_TASK_TIME_LIMIT": "3",
        "OBSERVABILITY_BATCH_BUCKETS": "1",
    }
    worker = start_worker(tmp_path, agg_conn.info.dsn, extra_env=env)
    try:
        result = celery_client(private_redis.url).send_task(
            BACKFILL, args=(start.isoformat(), end.isoformat(), "hour")
        )
        summary = result.get(timeout=240)
        log = worker.log()
        samples = worker.scrape()
    finally:
        worker.stop()
    runs = _runs(agg_conn)
    stopped = [r for r in runs if r["status"] == "interrupted"]
    assert stopped, f"the backfill finished within one time limit: {runs}"
    assert all(r["error"].startswith("SoftTimeLimitExceeded") for r in stopped), stopped
    assert not [r for r in runs if r["status"] == "failed"], runs
    assert runs[-1]["status"] == "succeeded" and runs[-1]["done_until"] == end
    assert summary["resumed_from"] is not None
    assert "Hard time limit" not in log
    # stopping at the time limit is not a failure: no failure alert for a long backfill
    count = "observability_aggregation_duration_seconds_count"
    assert sample(samples, count, granularity="hour", outcome="stopped") == len(stopped)
    assert sample(samples, count, granularity="hour", outcome="failure") == 0
    assert sample(samples, "observability_aggregation_task_failures_total", granularity="hour") == 0
    assert _mismatches(agg_conn, start, end) == 0
