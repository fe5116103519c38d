from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.observability_db import empty_observability
from worker.rollups.windows import bucket_floor
from worker.schema.migrate import CONNECT_ARGS

# What the store holds and publishes, read back for the comparison. Nothing here computes a
# figure: each query reads a table, a view or a function as a dashboard would.

CAGGS = tuple(
    (f"observability.{source}_{level}", granularity)
    for level, granularity in (("hourly", "hour"), ("daily", "day"), ("weekly", "week"))
    for source in ("traces", "llm_spans", "document_events")
)
METRIC_COLUMNS = "count, sum, min, max, avg, p50, p95, p99"
AGGREGATE_COLUMNS = (
    "count, sum_value as sum, min_value as min, max_value as max, avg_value as avg, "
    "p50_value as p50, p95_value as p95, p99_value as p99"
)
METRIC_TYPES = (
    "trace.duration_ms",
    "trace.total_tokens",
    "trace.cost_usd",
    "trace.errors",
    "llm.duration_ms",
    "llm.time_to_first_token_ms",
    "llm.input_tokens",
    "llm.output_tokens",
    "llm.cost_usd",
    "llm.errors",
    "llm.cost_unknown",
    "document.duration_ms",
    "document.errors",
)
_WATERMARKS = """
select c.view_name,
  case when w.watermark > '1900-01-01'::timestamptz then w.watermark end
from timescaledb_information.continuous_aggregates as c
join _timescaledb_catalog.hypertable as h
  on h.schema_name = c.materialization_hypertable_schema
  and h.table_name = c.materialization_hypertable_name
cross join lateral (
  select _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(h.id))
    as watermark
) as w
where c.view_schema = 'observability'
"""


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, **CONNECT_ARGS)


def reset(url: str, now: datetime, reach: timedelta = timedelta(days=60)) -> list[str]:
    """Empty the observability tables and re-materialize the rollups' complete buckets over the
    last `reach`, so that no rolled-up row of an earlier test is left. Open buckets are never
    materialized: they must stay real-time. Returns problems that make a check meaningless."""
    problems = []
    with connect(url) as conn:
        empty_observability(conn)
        start = bucket_floor(now - reach, "week")
        for rollup, granularity in CAGGS:
            end = bucket_floor(now, granularity)
            _refresh(
                conn,
                f"call public.refresh_continuous_aggregate('{rollup}', %s, %s, force => true)",
                [start, end],
            )
        for view, watermark in conn.execute(_WATERMARKS).fetchall():
            granularity = dict(CAGGS).get(f"observability.{view}")
            if watermark is not None and granularity and watermark > bucket_floor(now, granularity):
                problems.append(
                    f"{view} is materialized up to {watermark}, past the open bucket: an earlier "
                    "refresh froze it; the open buckets of this database cannot be checked"
                )
    return problems


def _refresh(conn: psycopg.Connection[Any], statement: str, params: list[Any]) -> None:
    for attempt in range(40):
        try:
            conn.execute(statement.encode(), params)
            return
        except psycopg.errors.LockNotAvailable:  # a policy refreshing the same rollup
            if attempt == 39:
                raise
            time.sleep(0.5)


def compress(url: str) -> int:
    """Run the raw tables' compression policies now, as their schedule would after two days:
    late rows and updates of phase 2 then land in compressed chunks. Returns the chunks
    compressed."""
    with connect(url) as conn:
        before = _compressed(conn)
        jobs = conn.execute(
            "select job_id from timescaledb_information.jobs"
            " where proc_name = 'policy_compression' and hypertable_schema = 'observability'"
        ).fetchall()
        for (job,) in jobs:
            conn.execute("call public.run_job(%s)", [job])
        return _compressed(conn) - before


def _compressed(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "select count(*) from timescaledb_information.chunks"
        " where hypertable_schema = 'observability' and is_compressed"
    ).fetchone()
    return int(row[0]) if row else 0


def prices(url: str) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return conn.execute(
            "select model, provider, effective_from, input_usd_per_million,"
            " output_usd_per_million from observability.model_prices"
        ).fetchall()


def sketch_implementation(url: str) -> str:
    with connect(url) as conn:
        row = conn.execute("select implementation from observability.percentile_sketch()")
        return str(row.fetchone()[0])  # type: ignore[index]


@dataclass
class Observed:
    traces: list[dict[str, Any]]
    spans: list[dict[str, Any]]
    documents: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    aggregates: list[dict[str, Any]]
    metric_types: set[str]


def read(url: str, start: datetime, end: datetime) -> Observed:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row, **CONNECT_ARGS) as conn:
        traces = conn.execute(
            "select trace_id, started_at, ended_at, duration_ms, name, operation_type, status,"
            " user_id, session_id, kb_id, total_tokens, cost_usd, error_type, error_message"
            " from observability.traces"
        ).fetchall()
        spans = conn.execute(
            "select trace_id, span_id, parent_span_id, started_at, ended_at, duration_ms,"
            " span_type, status, provider, model, input_tokens, output_tokens,"
            " time_to_first_token_ms, cost_usd, kb_id, name, error_type, error_message"
            " from observability.spans"
        ).fetchall()
        documents = conn.execute(
            "select id, created_at, event_type, status, duration_ms"
            " from observability.document_events"
        ).fetchall()
        metrics = conn.execute(
            "select granularity, bucket, metric_type, dimension_type, dimension_value,"
            f" {METRIC_COLUMNS} from observability.metrics"
            " where bucket >= %s and bucket < %s",
            [start, end],
        ).fetchall()
        aggregates = conn.execute(
            "select granularity, bucket_time as bucket, metric_type, dimension_type,"
            f" dimension_value, {AGGREGATE_COLUMNS} from observability.metrics_aggregates"
        ).fetchall()
        # the metric types the view can publish, from its definition's VALUES lists
        definition = conn.execute(
            "select pg_catalog.pg_get_viewdef('observability.metric_sketches'::regclass)"
        ).fetchone()
    text = definition["pg_get_viewdef"] if definition else ""
    known = {m for m in METRIC_TYPES if f"'{m}'" in text}
    return Observed(traces, spans, documents, metrics, aggregates, known)


def local_days(url: str, zone: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row, **CONNECT_ARGS) as conn:
        return conn.execute(
            "select granularity, bucket, metric_type, dimension_type, dimension_value,"
            f" {METRIC_COLUMNS} from observability.metrics_by_local_day(%s, %s, %s)",
            [zone, start, end],
        ).fetchall()
