from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from freezegun import freeze_time

from tests.aggregation_support import (
    aggregates,
    day_start,
    insert_spans,
    insert_traces,
    one,
    place,
)
from tests.factories import create_llm_spans_for_aggregation, create_traces_for_aggregation
from worker.rollups import aggregate_observability_metrics, backfill_metrics
from worker.scheduling.app import app

pytestmark = pytest.mark.usefixtures("agg_conn")
HOUR = timedelta(hours=1)


def _run(conn: psycopg.Connection[Any], granularity: str, start: datetime, end: datetime) -> Any:
    url = conn.info.dsn
    return aggregate_observability_metrics(granularity, start, end, database_url=url)


def _traces(start: datetime, count: int, step: timedelta, **kwargs: Any) -> list[dict[str, Any]]:
    return place(create_traces_for_aggregation(count=count, **kwargs), start, step)


def test_aggregate_task_registered_in_celery() -> None:
    task = app.tasks["worker.tasks.aggregate_observability_metrics"]
    assert task.acks_late is True
    assert task.max_retries is not None and task.max_retries > 0
    assert psycopg.OperationalError in task.autoretry_for
    # the task shell calls the plain function the other tests call
    assert task.run.__module__ == "worker.scheduling.tasks"


def test_aggregate_writes_to_metrics_aggregates_table(agg_conn: psycopg.Connection) -> None:
    start = day_start(5) + 10 * HOUR
    insert_traces(agg_conn, _traces(start, 12, timedelta(minutes=9)))
    result = _run(agg_conn, "hour", start, start + 2 * HOUR)
    rows = aggregates(agg_conn)
    assert result["metrics_created"] == len(rows) > 0
    assert {r["granularity"] for r in rows} == {"hour"}
    assert {r["bucket_time"] for r in rows} == {start, start + HOUR}
    assert result["window"] == {"start": start.isoformat(), "end": (start + 2 * HOUR).isoformat()}
    assert result["buckets"] == 2


def test_computes_count_for_traces(agg_conn: psycopg.Connection) -> None:
    start = day_start(5) + 3 * HOUR
    rows = _traces(start, 30, timedelta(minutes=5))  # 12 in the first hour, 12, then 6
    insert_traces(agg_conn, rows)
    _run(agg_conn, "hour", start, start + 3 * HOUR)
    counts = Counter(r["started_at"].replace(minute=0) for r in rows)
    synced = aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall")
    assert {r["bucket_time"]: r["count"] for r in synced} == dict(counts)
    assert sorted(counts.values()) == [6, 12, 12]


def test_computes_sum_min_max_avg(agg_conn: psycopg.Connection) -> None:
    start = day_start(5) + 4 * HOUR
    rows = _traces(start, 20, timedelta(minutes=2))
    insert_traces(agg_conn, rows)
    _run(agg_conn, "hour", start, start + HOUR)
    for metric, column in (
        ("trace.duration_ms", "duration_ms"),
        ("trace.total_tokens", "total_tokens"),
    ):
        values = [r[column] for r in rows]
        row = one(aggregates(agg_conn, metric_type=metric, dimension_type="overall"))
        assert row["count"] == len(values)
        assert row["sum_value"] == sum(values)
        assert row["min_value"] == min(values)
        assert row["max_value"] == max(values)
        assert row["avg_value"] == pytest.approx(statistics.fmean(values))


def test_computes_percentiles_p50_p95_p99(agg_conn: psycopg.Connection) -> None:
    start = day_start(5) + 6 * HOUR
    rows = _traces(start, 200, timedelta(seconds=15))
    insert_traces(agg_conn, rows)
    _run(agg_conn, "hour", start, start + HOUR)
    exact = agg_conn.execute(
        "select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by duration_ms)"
        " from observability.traces where started_at >= %s and started_at < %s",
        [start, start + HOUR],
    ).fetchone()
    assert exact is not None
    row = one(aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall"))
    # The sketch's relative error bound is about 1 %; allow twice that for interpolation.
    for got, want in zip(
        (row["p50_value"], row["p95_value"], row["p99_value"]), exact[0], strict=True
    ):
        assert got == pytest.approx(want, rel=0.02)
    assert row["min_value"] <= row["p50_value"] <= row["p95_value"] <= row["p99_value"]
    assert row["p99_value"] <= row["max_value"] * 1.02


def test_aggregates_by_operation_type_dimension(agg_conn: psycopg.Connection) -> None:
    start = day_start(5) + 7 * HOUR
    chats = _traces(start, 7, timedelta(minutes=3), operation_type="chat")
    searches = _traces(
        start + timedelta(minutes=1), 4, timedelta(minutes=5), operation_type="search"
    )
    insert_traces(agg_conn, chats + searches)
    _run(agg_conn, "hour", start, start + HOUR)
    by_type = aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="operation_type")
    assert {r["dimension_value"]: r["count"] for r in by_type} == {"chat": 7, "search": 4}
    chat = next(r for r in by_type if r["dimension_value"] == "chat")
    assert chat["sum_value"] == sum(t["duration_ms"] for t in chats)


def test_aggregates_by_model_dimension(agg_conn: psycopg.Connection) -> None:
    start = day_start(5) + 8 * HOUR
    gpt = place(
        create_llm_spans_for_aggregation(count=6, model="gpt-4"), start, timedelta(minutes=4)
    )
    claude = place(
        create_llm_spans_for_aggregation(count=3, model="claude-3"), start, timedelta(minutes=7)
    )
    insert_spans(agg_conn, gpt + claude)
    _run(agg_conn, "hour", start, start + HOUR)
    by_model = aggregates(agg_conn, metric_type="llm.duration_ms", dimension_type="model")
    assert {r["dimension_value"]: r["count"] for r in by_model} == {"gpt-4": 6, "claude-3": 3}
    gpt_row = next(r for r in by_model if r["dimension_value"] == "gpt-4")
    assert gpt_row["max_value"] == max(s["duration_ms"] for s in gpt)
    tokens = aggregates(agg_conn, metric_type="llm.input_tokens", dimension_type="model")
    assert {r["dimension_value"] for r in tokens} == {"gpt-4", "claude-3"}


def test_aggregates_by_kb_dimension(agg_conn: psycopg.Connection) -> None:
    start = day_start(5) + 9 * HOUR
    kb_a, kb_b = (create_traces_for_aggregation(count=1)[0]["kb_id"] for _ in range(2))
    rows = _traces(start, 5, timedelta(minutes=10), kb_id=kb_a)
    rows += _traces(start, 2, timedelta(minutes=20), kb_id=kb_b)
    insert_traces(agg_conn, rows)
    _run(agg_conn, "hour", start, start + HOUR)
    by_kb = aggregates(agg_conn, metric_type="trace.total_tokens", dimension_type="kb")
    assert {r["dimension_value"]: r["count"] for r in by_kb} == {str(kb_a): 5, str(kb_b): 2}
    users = aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="user")
    assert len(users) == len(rows)  # every trace has its own user here
    assert sum(r["count"] for r in users) == len(rows)


def test_supports_hour_granularity(agg_conn: psycopg.Connection) -> None:
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - 24 * HOUR
    hour = now.replace(minute=0)
    insert_traces(agg_conn, _traces(hour - 2 * HOUR, 6, timedelta(minutes=20)))
    insert_traces(agg_conn, _traces(hour, 3, timedelta(minutes=1)))  # current, incomplete hour
    with freeze_time(now, tick=True):
        result = aggregate_observability_metrics("hour", database_url=agg_conn.info.dsn)
    # the latest complete hour and the one before it; the running hour is left alone
    assert result["window"] == {
        "start": (hour - 2 * HOUR).isoformat(),
        "end": hour.isoformat(),
    }
    rows = aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall")
    assert [(r["bucket_time"], r["count"]) for r in rows] == [
        (hour - 2 * HOUR, 3),
        (hour - HOUR, 3),
    ]


def test_supports_day_granularity(agg_conn: psycopg.Connection) -> None:
    start = day_start(6)
    insert_traces(agg_conn, _traces(start + HOUR, 10, 2 * HOUR))  # 10 traces over day one
    insert_traces(agg_conn, _traces(start + 25 * HOUR, 4, 3 * HOUR))  # 4 on day two
    result = _run(agg_conn, "day", start + 5 * HOUR, start + 30 * HOUR)  # widened to whole days
    assert result["window"]["start"] == start.isoformat()
    assert result["buckets"] == 2
    rows = aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall")
    assert [(r["bucket_time"], r["granularity"], r["count"]) for r in rows] == [
        (start, "day", 10),
        (start + timedelta(days=1), "day", 4),
    ]
    assert rows[0]["p50_value"] is not None


def test_supports_week_granularity(agg_conn: psycopg.Connection) -> None:
    today = day_start(0)
    monday = today - timedelta(days=today.weekday() + 14)  # two weeks back, inside retention
    insert_traces(agg_conn, _traces(monday + HOUR, 14, timedelta(hours=11)))  # spans 6+ days
    result = _run(agg_conn, "week", monday + timedelta(days=2), monday + timedelta(days=3))
    assert result["window"] == {
        "start": monday.isoformat(),
        "end": (monday + timedelta(weeks=1)).isoformat(),
    }
    row = one(aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall"))
    assert (row["bucket_time"], row["granularity"], row["count"]) == (monday, "week", 14)
    assert row["bucket_time"].weekday() == 0


def test_idempotent_upsert_updates_existing(agg_conn: psycopg.Connection) -> None:
    start = day_start(5) + 12 * HOUR
    insert_traces(agg_conn, _traces(start, 8, timedelta(minutes=6)))
    first = _run(agg_conn, "hour", start, start + HOUR)
    before = aggregates(agg_conn)
    second = _run(agg_conn, "hour", start, start + HOUR)
    assert (second["metrics_created"], second["metrics_updated"]) == (0, 0)
    assert aggregates(agg_conn) == before  # not even updated_at moved

    late = _traces(start + timedelta(minutes=59), 1, HOUR, operation_type="chat")
    insert_traces(agg_conn, late)
    third = _run(agg_conn, "hour", start, start + HOUR)
    after = aggregates(agg_conn)
    assert third["metrics_updated"] > 0
    assert len(after) == first["metrics_created"] + third["metrics_created"]
    keys = [(r["metric_type"], r["dimension_type"], r["dimension_value"]) for r in after]
    assert len(keys) == len(set(keys))  # one row per key: updated, not duplicated
    overall = one(aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall"))
    old = next(
        r
        for r in before
        if (r["metric_type"], r["dimension_type"]) == ("trace.duration_ms", "overall")
    )
    assert overall["count"] == old["count"] + 1
    assert overall["created_at"] == old["created_at"]
    assert overall["updated_at"] > old["updated_at"]


def test_backfill_processes_date_range(agg_conn: psycopg.Connection) -> None:
    start = day_start(9)
    end = start + timedelta(days=4)
    rows = _traces(start + timedelta(minutes=30), 16, 6 * HOUR)  # one every 6 hours for 4 days
    insert_traces(agg_conn, rows)
    seen: list[tuple[datetime, datetime]] = []
    result = backfill_metrics(
        start,
        end,
        "hour",
        database_url=agg_conn.info.dsn,
        progress=lambda batch, counts: seen.append((batch.start, batch.end)),
    )
    assert result["buckets"] == 96
    assert seen[0][0] == start and seen[-1][1] == end and len(seen) == 2  # 72 + 24 hours
    synced = aggregates(agg_conn, metric_type="trace.duration_ms", dimension_type="overall")
    assert [r["bucket_time"] for r in synced] == [r["started_at"].replace(minute=0) for r in rows]
    run = agg_conn.execute(
        "select kind, status, done_until, buckets from observability.aggregation_runs"
        " where id = %s",
        [result["run_id"]],
    ).fetchone()
    assert run == ("backfill", "succeeded", end, 96)


def test_empty_data_produces_no_aggregates(agg_conn: psycopg.Connection) -> None:
    start = day_start(4) + 2 * HOUR
    result = _run(agg_conn, "hour", start, start + 3 * HOUR)
    assert result["buckets"] == 3
    assert result["metrics_created"] == 0
    assert aggregates(agg_conn) == []
