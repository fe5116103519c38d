from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from tests.rollup_support import Window, rows_as_dicts

PERCENTILES = "array[0.5, 0.95, 0.99]::float8[]"
WIDTHS = {"hourly": "1 hour", "daily": "1 day", "weekly": "1 week"}
LOWER = {"daily": "hourly", "weekly": "daily"}


@dataclass(frozen=True)
class Source:
    """What a rollup aggregates, written out independently of sql/ as the test's oracle."""

    name: str
    table: str
    time: str
    where: str
    dimensions: str
    count: str
    sketched: dict[str, str]  # rollup column prefix -> raw column
    plain: dict[str, str]

    @property
    def metrics(self) -> dict[str, str]:
        return {**self.sketched, **self.plain}


SOURCES = (
    Source(
        name="traces",
        table="observability.traces",
        time="started_at",
        where="true",
        dimensions="('overall', ''), ('operation_type', t.operation_type), "
        "('kb', t.kb_id::text), ('user', t.user_id::text)",
        count="trace_count",
        sketched={"duration": "duration_ms", "total_tokens": "total_tokens"},
        plain={"cost": "cost_usd"},
    ),
    Source(
        name="llm_spans",
        table="observability.spans",
        time="started_at",
        where="t.span_type = 'llm'",
        dimensions="('overall', ''), ('model', t.model), ('provider', t.provider)",
        count="span_count",
        sketched={"duration": "duration_ms", "ttft": "time_to_first_token_ms"},
        plain={
            "input_tokens": "input_tokens",
            "output_tokens": "output_tokens",
            "cost": "cost_usd",
        },
    ),
    Source(
        name="document_events",
        table="observability.document_events",
        time="created_at",
        where="true",
        dimensions="('overall', ''), ('event_type', t.event_type)",
        count="event_count",
        sketched={"duration": "duration_ms"},
        plain={},
    ),
)
KEY = ("bucket", "dimension_type", "dimension_value")


def from_raw(conn: psycopg.Connection[Any], source: Source, level: str, window: Window) -> list:
    """The rollup's defining query over the raw rows, with exact percentile_cont."""
    columns = [
        f"pg_catalog.count(*) as {source.count}",
        "pg_catalog.count(*) filter (where t.status = 'error') as error_count",
    ]
    for prefix, column in source.metrics.items():
        columns += [
            f"pg_catalog.count(t.{column}) as {prefix}_count",
            f"pg_catalog.sum(t.{column}) as {prefix}_sum",
            f"pg_catalog.min(t.{column}) as {prefix}_min",
            f"pg_catalog.max(t.{column}) as {prefix}_max",
        ]
        if prefix in source.sketched:
            columns.append(
                f"pg_catalog.percentile_cont({PERCENTILES}) within group (order by t.{column})"
                f" as {prefix}_percentiles"
            )
    query = f"""
        select public.time_bucket(interval '{WIDTHS[level]}', t.{source.time}) as bucket,
          d.dimension_type, d.dimension_value, {", ".join(columns)}
        from {source.table} as t
        cross join lateral (values {source.dimensions}) as d (dimension_type, dimension_value)
        where {source.where} and d.dimension_value is not null
          and t.{source.time} >= %s and t.{source.time} < %s
        group by 1, 2, 3
    """
    return rows_as_dicts(conn.execute(query, [window.start, window.end]))


def _rollup_columns(
    source: Source, schema: str, alias: str, aggregate: bool, stored: bool = False
) -> list[str]:
    def agg(function: str, column: str) -> str:
        return f"{function}({alias}.{column})" if aggregate else f"{alias}.{column}"

    columns = [
        f"{agg('pg_catalog.sum', source.count)}::bigint as {source.count}",
        f"{agg('pg_catalog.sum', 'error_count')}::bigint as error_count",
    ]
    for prefix in source.metrics:
        columns += [
            f"{agg('pg_catalog.sum', prefix + '_count')}::bigint as {prefix}_count",
            f"{agg('pg_catalog.sum', prefix + '_sum')} as {prefix}_sum",
            f"{agg('pg_catalog.min', prefix + '_min')} as {prefix}_min",
            f"{agg('pg_catalog.max', prefix + '_max')} as {prefix}_max",
        ]
        if prefix in source.sketched:
            sketch = agg(f"{schema}.rollup", prefix + "_sketch")
            from_sketch = f"{schema}.approx_percentile_array({PERCENTILES}, {sketch})"
            if stored:
                # daily and weekly rows store their percentiles; also read them from the sketch
                columns.append(f"{alias}.{prefix}_percentiles")
                columns.append(f"{from_sketch} as {prefix}_from_sketch")
            else:
                columns.append(f"{from_sketch} as {prefix}_percentiles")
            if not aggregate:
                columns.append(f"{alias}.{prefix}_avg")
    return columns


def from_rollup(
    conn: psycopg.Connection[Any], source: Source, level: str, window: Window, schema: str
) -> list:
    """What the continuous aggregate holds for the window, percentiles read from its sketches."""
    query = f"""
        select r.bucket, r.dimension_type, r.dimension_value,
          {", ".join(_rollup_columns(source, schema, "r", False, stored=level != "hourly"))}
        from observability.{source.name}_{level} as r
        where r.bucket >= %s and r.bucket < %s
    """
    return rows_as_dicts(conn.execute(query, [window.start, window.end]))


def rolled_up_from_lower(
    conn: psycopg.Connection[Any], source: Source, level: str, window: Window, schema: str
) -> list:
    """The level below, rolled up at query time into this level's buckets."""
    query = f"""
        select public.time_bucket(interval '{WIDTHS[level]}', r.bucket) as bucket,
          r.dimension_type, r.dimension_value,
          {", ".join(_rollup_columns(source, schema, "r", aggregate=True))}
        from observability.{source.name}_{LOWER[level]} as r
        where r.bucket >= %s and r.bucket < %s
        group by 1, 2, 3
    """
    return rows_as_dicts(conn.execute(query, [window.start, window.end]))
