from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from tests.factories import (
    create_completed_trace,
    create_document_event,
    create_llm_span,
    create_trace,
)
from tests.rollup_support import (
    Window,
    clean_window,
    close,
    insert_rows,
    keyed,
    monday_window,
    refresh_all,
    rollup_conn,
    rows_as_dicts,
    sketch_schema,
)

__all__ = ["rollup_conn"]

WINDOW = monday_window(days_ago=20)
COLUMNS = [
    "bucket", "granularity", "metric_type", "dimension_type", "dimension_value",
    "count", "sum", "min", "max", "avg", "p50", "p95", "p99",
]  # fmt: skip
# metric -> (rollup source, column prefix or the row count, has a sketch)
METRICS = {
    "trace.duration_ms": ("traces", "duration", True),
    "trace.total_tokens": ("traces", "total_tokens", True),
    "trace.cost_usd": ("traces", "cost", False),
    "trace.errors": ("traces", "trace_count", False),
    "llm.duration_ms": ("llm_spans", "duration", True),
    "llm.time_to_first_token_ms": ("llm_spans", "ttft", True),
    "llm.input_tokens": ("llm_spans", "input_tokens", False),
    "llm.output_tokens": ("llm_spans", "output_tokens", False),
    "llm.cost_usd": ("llm_spans", "cost", False),
    "llm.errors": ("llm_spans", "span_count", False),
    "llm.cost_unknown": ("llm_spans", "cost_unknown", False),
    "document.duration_ms": ("document_events", "duration", True),
    "document.errors": ("document_events", "event_count", False),
}
DIMENSIONS = {
    "traces": {"overall", "operation_type", "kb", "user"},
    "llm_spans": {"overall", "model", "provider"},
    "document_events": {"overall", "event_type"},
}
GRANULARITIES = {"hour": "hourly", "day": "daily", "week": "weekly"}


@pytest.fixture(scope="module")
def data(rollup_conn: psycopg.Connection) -> Iterator[Window]:
    clean_window(rollup_conn, WINDOW)
    rng = random.Random(11)
    random.seed(11)
    traces = [
        create_completed_trace(
            started_at=WINDOW.at(days=rng.uniform(0, 9)),
            operation_type=rng.choice(("chat", "search")),
            user_id=UUID(int=rng.randint(1, 4)),
            kb_id=UUID(int=rng.randint(100, 102)),
            duration_ms=int(rng.lognormvariate(7, 0.8)),
            total_tokens=rng.randint(10, 4000),
            cost_usd=Decimal(rng.randint(1, 90000)) / 1_000_000,
            status=rng.choice(("ok", "ok", "ok", "error")),
        )
        for _ in range(300)
    ]
    spans = [
        create_llm_span(
            started_at=WINDOW.at(days=rng.uniform(0, 9)),
            model=rng.choice(("gpt-4", "claude-3")),
            duration_ms=int(rng.lognormvariate(6, 0.7)),
        )
        for _ in range(300)
    ]
    events = [
        create_document_event(
            created_at=WINDOW.at(days=rng.uniform(0, 9)),
            event_type=rng.choice(("parse", "embed")),
            status=rng.choice(("ok", "error")),
        )
        for _ in range(100)
    ]
    insert_rows(rollup_conn, "observability.traces", traces)
    insert_rows(rollup_conn, "observability.spans", spans)
    insert_rows(rollup_conn, "observability.document_events", events)
    refresh_all(rollup_conn, WINDOW)
    yield WINDOW
    clean_window(rollup_conn, WINDOW)


def metrics(conn: psycopg.Connection, where: str, params: list[Any]) -> list[dict[str, Any]]:
    return rows_as_dicts(conn.execute(f"select * from observability.metrics where {where}", params))


def test_view_shape(rollup_conn: psycopg.Connection) -> None:
    cursor = rollup_conn.execute("select * from observability.metrics where false")
    assert [d.name for d in cursor.description or []] == COLUMNS
    types = rollup_conn.execute(
        "select pg_catalog.format_type(a.atttypid, a.atttypmod)"
        " from pg_catalog.pg_attribute as a"
        " where a.attrelid = 'observability.metrics'::regclass and a.attnum > 0"
    ).fetchall()
    # Plain numbers only, whatever sketch is installed.
    assert {t for (t,) in types} == {
        "timestamp with time zone",
        "text",
        "bigint",
        "double precision",
    }


def test_every_metric_at_every_granularity_and_dimension(
    rollup_conn: psycopg.Connection, data: Window
) -> None:
    rows = rollup_conn.execute(
        "select distinct metric_type, granularity, dimension_type from observability.metrics"
        " where bucket >= %s and bucket < %s",
        [data.start, data.end],
    ).fetchall()
    expected = {
        (metric, granularity, dimension)
        for metric, (source, _, _) in METRICS.items()
        for granularity in GRANULARITIES
        for dimension in DIMENSIONS[source]
    }
    assert set(rows) == expected


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_view_rows_are_the_rollup_rows(
    rollup_conn: psycopg.Connection, data: Window, metric: str, granularity: str
) -> None:
    source, column, sketched = METRICS[metric]
    schema = sketch_schema(rollup_conn)
    rollup = f"observability.{source}_{GRANULARITIES[granularity]}"
    if column.endswith("_count"):  # the errors metric: one observation per row
        count, total = column, "r.error_count"
        extremes = f"(r.error_count = r.{count})::int, (r.error_count > 0)::int"
    elif column == "cost_unknown":  # likewise, 1 for each LLM span without a cost
        count, total = "span_count", "(r.span_count - r.cost_count)"
        extremes = "(r.cost_count = 0)::int, (r.cost_count < r.span_count)::int"
    else:
        count, total = f"{column}_count", f"r.{column}_sum"
        extremes = f"r.{column}_min, r.{column}_max"
    if not sketched:
        percentiles = "null::float8[]"
    elif granularity == "hour":
        percentiles = f"{schema}.approx_percentile_array(array[0.5, 0.95, 0.99], r.{column}_sketch)"
    else:
        percentiles = f"r.{column}_percentiles"  # stored at refresh time
    expected = rows_as_dicts(
        rollup_conn.execute(
            f"select r.bucket, r.dimension_type, r.dimension_value, r.{count} as count,"
            f" {total}::float8 as sum, {extremes}, {percentiles} as percentiles"
            f" from {rollup} as r where r.bucket >= %s and r.bucket < %s and r.{count} > 0",
            [data.start, data.end],
        )
    )
    actual = keyed(
        metrics(
            rollup_conn,
            "granularity = %s and metric_type = %s and bucket >= %s and bucket < %s",
            [granularity, metric, data.start, data.end],
        ),
        "bucket",
        "dimension_type",
        "dimension_value",
    )
    assert len(actual) == len(expected) > 0
    for row in expected:
        got = actual[(row["bucket"], row["dimension_type"], row["dimension_value"])]
        assert (got["count"], got["sum"]) == (row["count"], row["sum"])
        assert close(got["avg"], row["sum"] / row["count"], rel=1e-12)
        assert [got["p50"], got["p95"], got["p99"]] == (row["percentiles"] or [None] * 3)


@pytest.mark.parametrize(
    "wanted",
    [
        ["llm.duration_ms"],
        ["trace.errors", "document.duration_ms", "llm.cost_unknown"],  # one of each source
        ["trace.duration_ms", "trace.total_tokens"],
        ["no.such_metric"],
    ],
)
def test_a_metric_filter_keeps_exactly_the_rows_of_those_metrics(
    rollup_conn: psycopg.Connection, data: Window, wanted: list[str]
) -> None:
    """A filter on metric_type lets the planner drop the other sources' branches of the view
    (sql/idempotent/003-rollup-views.sql): the rows it keeps are those of an unfiltered read."""
    key = ("bucket", "granularity", "metric_type", "dimension_type", "dimension_value")
    window = [data.start, data.end]
    unfiltered = metrics(rollup_conn, "bucket >= %s and bucket < %s", window)
    expected = keyed((r for r in unfiltered if r["metric_type"] in wanted), *key)
    # Literals, as Grafana sends them, so that the planner sees constants; and a parameter.
    listed = ", ".join(sql.quote(m) for m in wanted)
    filters = [f"metric_type in ({listed})", "metric_type = any(%s::text[])"]
    for where, params in zip(filters, [[], [wanted]], strict=True):
        found = metrics(rollup_conn, f"{where} and bucket >= %s and bucket < %s", params + window)
        assert keyed(found, *key) == expected, where
        assert len(found) == len(expected)
    assert (len(expected) > 0) == (wanted != ["no.such_metric"])


def test_empty_windows_have_no_rows(rollup_conn: psycopg.Connection, data: Window) -> None:
    empty = (data.start - timedelta(weeks=1), data.start)
    assert metrics(rollup_conn, "bucket >= %s and bucket < %s", list(empty)) == []
    rows = rollup_conn.execute(
        "select * from observability.metrics_by_local_day('UTC', %s, %s)", list(empty)
    ).fetchall()
    assert rows == [], (empty, rows[:3])
    refresh_all(rollup_conn, Window(*empty))
    for level in ("hourly", "daily"):
        found = rollup_conn.execute(
            f"select count(*) from observability.traces_{level} where bucket >= %s and bucket < %s",
            list(empty),
        ).fetchone()
        assert found == (0,)


def test_null_durations_are_ignored(rollup_conn: psycopg.Connection, data: Window) -> None:
    hour = data.at(days=12, hours=5)
    durations = [None, 100, None, 250, 400, None, 1000]
    rows = []
    for i, duration in enumerate(durations):
        started = hour + timedelta(minutes=i)
        if duration is None:  # still running: no end, no duration
            rows.append(create_trace(started_at=started, operation_type="nulls"))
        else:
            rows.append(
                create_completed_trace(
                    started_at=started, operation_type="nulls", duration_ms=duration
                )
            )
    insert_rows(rollup_conn, "observability.traces", rows)
    refresh_all(rollup_conn, data)
    by_metric = {
        row["metric_type"]: row
        for row in metrics(
            rollup_conn,
            "granularity = 'hour' and bucket = %s and dimension_value = 'nulls'",
            [hour],
        )
    }
    duration = by_metric["trace.duration_ms"]
    assert (duration["count"], duration["sum"], duration["min"], duration["max"]) == (
        4,
        1750,
        100,
        1000,
    )
    exact = rollup_conn.execute(
        "select pg_catalog.percentile_cont(array[0.5, 0.95, 0.99]) within group (order by d)"
        " from pg_catalog.unnest(%s::int[]) as d",
        [durations],
    ).fetchone()
    assert exact is not None
    got = [duration["p50"], duration["p95"], duration["p99"]]
    assert all(close(g, e) for g, e in zip(got, exact[0], strict=True))
    assert by_metric["trace.errors"]["count"] == len(durations)


def test_the_week_starts_on_monday_utc(rollup_conn: psycopg.Connection, data: Window) -> None:
    monday = data.at(days=7)
    assert monday.weekday() == 0
    sunday_night = monday - timedelta(microseconds=1)
    insert_rows(
        rollup_conn,
        "observability.traces",
        [
            create_completed_trace(started_at=sunday_night, operation_type="boundary"),
            create_completed_trace(started_at=monday, operation_type="boundary"),
            create_completed_trace(started_at=monday, operation_type="boundary"),
        ],
    )
    refresh_all(rollup_conn, data)
    weeks = rollup_conn.execute(
        "select bucket, count from observability.metrics where granularity = 'week'"
        " and metric_type = 'trace.errors' and dimension_value = 'boundary' order by bucket"
    ).fetchall()
    assert weeks == [(data.start, 1), (monday, 2)]
    days = rollup_conn.execute(
        "select bucket, count from observability.metrics where granularity = 'day'"
        " and metric_type = 'trace.errors' and dimension_value = 'boundary' order by bucket"
    ).fetchall()
    assert days == [(monday - timedelta(days=1), 1), (monday, 2)]


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/New_York"])
def test_local_days_match_a_direct_computation(
    rollup_conn: psycopg.Connection, data: Window, zone: str
) -> None:
    first = (data.start + timedelta(days=2)).astimezone(ZoneInfo(zone))
    start = datetime(first.year, first.month, first.day, tzinfo=ZoneInfo(zone))
    end = start + timedelta(days=4)
    actual = keyed(
        rows_as_dicts(
            rollup_conn.execute(
                "select * from observability.metrics_by_local_day(%s, %s, %s)"
                " where metric_type in ('trace.duration_ms', 'llm.duration_ms')",
                [zone, start, end],
            )
        ),
        "bucket",
        "metric_type",
        "dimension_type",
        "dimension_value",
    )
    expected = rollup_conn.execute(
        """
        select public.time_bucket(interval '1 day', t.started_at, %(zone)s) as bucket,
          'trace.duration_ms', d.dimension_type, d.dimension_value, pg_catalog.count(*),
          pg_catalog.sum(t.duration_ms)::float8,
          pg_catalog.percentile_cont(array[0.5, 0.95, 0.99]) within group (order by duration_ms)
        from observability.traces as t
        cross join lateral (values ('overall', ''), ('operation_type', t.operation_type))
          as d (dimension_type, dimension_value)
        where t.started_at >= %(start)s and t.started_at < %(end)s
        group by 1, 2, 3, 4
        union all
        select public.time_bucket(interval '1 day', s.started_at, %(zone)s), 'llm.duration_ms',
          d.dimension_type, d.dimension_value, pg_catalog.count(*),
          pg_catalog.sum(s.duration_ms)::float8,
          pg_catalog.percentile_cont(array[0.5, 0.95, 0.99]) within group (order by duration_ms)
        from observability.spans as s
        cross join lateral (values ('overall', ''), ('model', s.model))
          as d (dimension_type, dimension_value)
        where s.started_at >= %(start)s and s.started_at < %(end)s and s.span_type = 'llm'
        group by 1, 2, 3, 4
        """,
        {"zone": zone, "start": start, "end": end},
    ).fetchall()
    assert len(expected) > 8
    for bucket, metric, dimension, value, count, total, exact in expected:
        assert bucket.astimezone(ZoneInfo(zone)).hour == 0
        got = actual.pop((bucket, metric, dimension, value))
        assert (got["count"], got["sum"]) == (count, total)
        assert all(
            close(g, e) for g, e in zip([got["p50"], got["p95"], got["p99"]], exact, strict=True)
        )
    assert not [key for key in actual if key[2] in ("overall", "operation_type", "model")]
    if zone == "UTC":
        # UTC days rolled up from hours are the daily rollup (sums of float8 hourly sums may
        # differ in the last bits from the sum of the numeric costs).
        differences = rollup_conn.execute(
            "select m.metric_type, m.count, l.count, m.sum, l.sum, m.p99, l.p99"
            " from (select * from observability.metrics where granularity = 'day'"
            "   and bucket >= %(start)s and bucket < %(end)s) as m"
            " full join observability.metrics_by_local_day('UTC', %(start)s, %(end)s) as l"
            " using (bucket, metric_type, dimension_type, dimension_value)"
            " where ((m.count, m.p50, m.p95, m.p99) is distinct from (l.count, l.p50, l.p95, l.p99)"
            " or pg_catalog.abs(m.sum - l.sum) > 1e-9 * pg_catalog.abs(m.sum))",
            {"start": start, "end": end},
        ).fetchall()
        assert differences == []


def test_current_buckets_are_visible_before_any_refresh(rollup_conn: psycopg.Connection) -> None:
    """Real-time aggregation: rows of the current hour show at every granularity at once."""
    now = rollup_conn.execute("select pg_catalog.now()").fetchone()[0]  # type: ignore[index]
    trace = create_completed_trace(started_at=now, operation_type="right_now", duration_ms=77)
    insert_rows(rollup_conn, "observability.traces", [trace])
    try:
        rows = rollup_conn.execute(
            "select granularity, count, max from observability.metrics"
            " where metric_type = 'trace.duration_ms' and dimension_value = 'right_now'"
            " and bucket > %s order by granularity",
            [now - timedelta(days=8)],
        ).fetchall()
        assert rows == [("day", 1, 77.0), ("hour", 1, 77.0), ("week", 1, 77.0)]
    finally:
        rollup_conn.execute(
            "delete from observability.traces where trace_id = %s", [trace["trace_id"]]
        )


def test_local_day_buckets_are_midnights(rollup_conn: psycopg.Connection, data: Window) -> None:
    rows = rollup_conn.execute(
        "select distinct bucket from observability.metrics_by_local_day('Asia/Kolkata', %s, %s)",
        [data.start, data.start + timedelta(days=3)],
    ).fetchall()
    zone = ZoneInfo("Asia/Kolkata")
    assert rows and all(b.astimezone(zone).time() == datetime.min.time() for (b,) in rows), rows
    assert all(b.tzinfo is not None and b.astimezone(UTC).minute == 30 for (b,) in rows)
