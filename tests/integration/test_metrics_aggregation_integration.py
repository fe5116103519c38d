from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from celery.schedules import crontab

from tests.aggregation_support import aggregates, day_start, insert_spans, insert_traces, place
from tests.celery_support import CeleryWorker, sample
from tests.factories import (
    create_document_event,
    create_failed_trace,
    create_llm_spans_for_aggregation,
    create_traces_for_aggregation,
)
from tests.rollup_support import insert_rows, rows_as_dicts
from worker.rollups import aggregate_observability_metrics
from worker.scheduling.app import BEAT_SCHEDULE, app
from worker.scheduling.app import app as celery_app
from worker.scheduling.tasks import AGGREGATE_TASK, BACKFILL_TASK

aggregate_task = celery_app.tasks[AGGREGATE_TASK]
backfill_task = celery_app.tasks[BACKFILL_TASK]

HOUR = timedelta(hours=1)
ROLLUPS = {
    f"observability.{source}_{level}"
    for source in ("traces", "llm_spans", "document_events")
    for level in ("hourly", "daily", "weekly")
}


@pytest.fixture(scope="module")
def worker(celery_worker: CeleryWorker) -> CeleryWorker:
    return celery_worker


@pytest.fixture
def populated_traces_table(agg_conn: psycopg.Connection) -> tuple[datetime, datetime]:
    """100 traces over 24 hours, as the seed's fixture, placed on a day of their own."""
    start = day_start(8)
    traces = create_traces_for_aggregation(count=100, time_range_hours=24)
    insert_traces(agg_conn, place(traces, start, timedelta(hours=24) / 100))
    return start, start + timedelta(days=1)


def _view_rows(conn: psycopg.Connection, granularity: str, start: datetime, end: datetime) -> Any:
    cursor = conn.execute(
        "select bucket as bucket_time, metric_type, dimension_type, dimension_value, count,"
        " sum as sum_value, min as min_value, max as max_value, avg as avg_value,"
        " p50 as p50_value, p95 as p95_value, p99 as p99_value"
        " from observability.metrics where granularity = %s and bucket >= %s and bucket < %s",
        [granularity, start, end],
    )
    return sorted(rows_as_dicts(cursor), key=_key)


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["metric_type"], row["dimension_type"], row["dimension_value"], row["bucket_time"])


def _synced(conn: psycopg.Connection, granularity: str) -> list[dict[str, Any]]:
    rows = aggregates(conn, granularity=granularity)
    for row in rows:
        for column in ("granularity", "created_at", "updated_at"):
            row.pop(column)
    return sorted(rows, key=_key)


def test_hourly_aggregation_full_flow(
    worker: CeleryWorker,
    agg_conn: psycopg.Connection,
    populated_traces_table: tuple[datetime, datetime],
) -> None:
    start, end = populated_traces_table
    # Through the real broker to the real worker process, as beat would send it.
    result = aggregate_task.apply_async(args=("hour", start.isoformat(), end.isoformat()))
    summary = result.get(timeout=180)
    assert result.successful()
    assert summary["buckets"] == 24
    assert summary["metrics_created"] > 0
    synced = _synced(agg_conn, "hour")
    assert len(synced) == summary["metrics_created"]
    # The worker copies the database's rollups: every row, every value, nothing else.
    assert synced == _view_rows(agg_conn, "hour", start, end)
    overall = [
        r
        for r in synced
        if (r["metric_type"], r["dimension_type"]) == ("trace.duration_ms", "overall")
    ]
    assert sum(r["count"] for r in overall) == 100


def test_aggregation_with_real_trace_data(agg_conn: psycopg.Connection) -> None:
    today = day_start(0)
    monday = today - timedelta(days=today.weekday() + 14)
    step = timedelta(minutes=37)
    traces = place(create_traces_for_aggregation(count=150), monday + HOUR, step)
    failed = place([create_failed_trace() for _ in range(15)], monday + 2 * HOUR, 7 * step)
    spans = place(create_llm_spans_for_aggregation(count=120), monday + HOUR, step)
    events = [
        create_document_event(created_at=monday + i * 3 * HOUR, event_type=kind)
        for i, kind in enumerate(["parse", "chunk", "embed"] * 12)
    ]
    insert_traces(agg_conn, traces + failed)
    insert_spans(agg_conn, spans)
    insert_rows(agg_conn, "observability.document_events", events)
    week_end = monday + timedelta(weeks=1)
    for granularity in ("hour", "day", "week"):
        aggregate_observability_metrics(
            granularity, monday, week_end, database_url=agg_conn.info.dsn
        )
        assert _synced(agg_conn, granularity) == _view_rows(agg_conn, granularity, monday, week_end)

    weekly = {
        (r["metric_type"], r["dimension_type"], r["dimension_value"]): r
        for r in _synced(agg_conn, "week")
    }
    assert weekly[("trace.errors", "overall", "")]["count"] == 165
    assert weekly[("trace.errors", "overall", "")]["sum_value"] == 15
    assert weekly[("llm.duration_ms", "overall", "")]["count"] == 120
    assert {k[2] for k in weekly if k[:2] == ("document.duration_ms", "event_type")} == {
        "parse",
        "chunk",
        "embed",
    }
    models = {s["model"] for s in spans}
    assert {k[2] for k in weekly if k[:2] == ("llm.duration_ms", "model")} == models
    exact = agg_conn.execute(
        "select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by duration_ms)"
        " from observability.traces where started_at >= %s and started_at < %s",
        [monday, week_end],
    ).fetchone()
    assert exact is not None
    row = weekly[("trace.duration_ms", "overall", "")]
    for got, want in zip(
        (row["p50_value"], row["p95_value"], row["p99_value"]), exact[0], strict=True
    ):
        assert got == pytest.approx(want, rel=0.02)
    # hour rows add up to the day rows, which add up to the week row
    hourly = _synced(agg_conn, "hour")
    daily = _synced(agg_conn, "day")
    for rows in (hourly, daily):
        total = sum(
            r["count"]
            for r in rows
            if (r["metric_type"], r["dimension_type"]) == ("llm.input_tokens", "overall")
        )
        assert total == weekly[("llm.input_tokens", "overall", "")]["count"]


def test_beat_schedule_configured_correctly() -> None:
    assert app.conf.beat_schedule == BEAT_SCHEDULE
    assert app.conf.timezone == "UTC" and app.conf.enable_utc
    entries = {entry["args"][0]: entry for entry in BEAT_SCHEDULE.values()}
    assert set(entries) == {"hour", "day", "week"}
    for entry in entries.values():
        assert entry["task"] == "worker.tasks.aggregate_observability_metrics"
        assert entry["task"] in app.tasks
        assert isinstance(entry["schedule"], crontab)
    assert entries["hour"]["schedule"] == crontab(minute=5)
    assert entries["day"]["schedule"] == crontab(minute=0, hour=1)
    assert entries["week"]["schedule"] == crontab(minute=0, hour=2, day_of_week="mon")
    # Next runs after Wednesday 2026-01-07 10:06 UTC: 11:05, Thursday 01:00, Monday 02:00.
    now = datetime(2026, 1, 7, 10, 6, tzinfo=UTC)
    expected = {
        "hour": datetime(2026, 1, 7, 11, 5, tzinfo=UTC),
        "day": datetime(2026, 1, 8, 1, 0, tzinfo=UTC),
        "week": datetime(2026, 1, 12, 2, 0, tzinfo=UTC),
    }
    for granularity, entry in entries.items():
        schedule = entry["schedule"]
        schedule.nowfun = lambda: now
        assert now + schedule.remaining_estimate(now) == expected[granularity]
    # Time limits stay below the broker's visibility timeout, or a late-acked task runs twice.
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert app.conf.task_soft_time_limit < app.conf.task_time_limit < visibility


def test_prometheus_metrics_exported(worker: CeleryWorker, agg_conn: psycopg.Connection) -> None:
    before = worker.scrape()
    # a scheduled run, as beat sends it: the latest complete hour and the one before
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    insert_traces(
        agg_conn, place(create_traces_for_aggregation(count=10), start, timedelta(minutes=5))
    )
    summary = aggregate_task.apply_async(args=("hour",)).get(timeout=180)
    assert summary["kind"] == "scheduled"
    samples = worker.scrape()
    name = "observability_aggregation_duration_seconds_count"
    runs = sample(samples, name, granularity="hour", outcome="success") or 0
    assert runs == (sample(before, name, granularity="hour", outcome="success") or 0) + 1
    processed = "observability_aggregation_records_processed_total"
    assert (
        (sample(samples, processed, granularity="hour") or 0)
        - (sample(before, processed, granularity="hour") or 0)
        == summary["records_processed"]
        > 0
    )
    last_success = sample(samples, "observability_aggregation_last_success", granularity="hour")
    assert last_success is not None and abs(last_success - time.time()) < 120
    # freshness and job health, read from the database at scrape time
    assert sample(samples, "observability_database_up") == 1
    lags = {
        dict(labels)["rollup"]
        for (metric, labels) in samples
        if metric == "observability_rollup_lag_seconds"
    }
    assert lags == ROLLUPS
    jobs = [key for key in samples if key[0] == "observability_job_failures"]
    assert {dict(labels)["job_kind"] for _, labels in jobs} >= {
        "refresh",
        "compression",
        "retention",
    }
