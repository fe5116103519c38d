from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from worker.clock import CLOCK_SKEW
from worker.models import SCHEMA
from worker.models.granularities import BY_LEVEL, CATALOGUE
from worker.rollups.stale import StaleStatus, stale_statuses
from worker.schema.sqltemplate import recorded_sketch


@dataclass(frozen=True)
class SketchStatus:
    implementation: str  # "timescaledb_toolkit" or "observability" (the project's own)
    function_schema: str


@dataclass(frozen=True)
class RollupStatus:
    name: str  # schema-qualified continuous aggregate
    source: str  # what it aggregates: a hypertable or the rollup one level down
    bucket_width: str
    real_time: bool
    newest_bucket: datetime | None  # start of the newest materialized bucket up to now
    watermark: datetime | None  # materialized up to here (exclusive)
    lag: timedelta | None  # how far the watermark is behind now; 0 when at or past now
    future_buckets: int = 0  # materialized buckets starting after now + CLOCK_SKEW
    newest_future_bucket: datetime | None = None  # None too when that bucket is 'infinity'


@dataclass(frozen=True)
class JobStatus:
    job_id: int
    kind: str  # refresh, compression, retention or the procedure name
    target: str  # schema-qualified rollup or hypertable
    scheduled: bool
    schedule_interval: timedelta
    config: dict[str, Any]
    last_run_status: str | None
    last_run_started_at: datetime | None
    last_successful_finish: datetime | None
    next_start: datetime | None
    total_runs: int
    total_failures: int
    last_error: str | None

    @property
    def never_succeeded(self) -> bool:
        """It has failed, and TimescaleDB has no successful finish for it (-infinity)."""
        return self.total_failures > 0 and self.last_successful_finish is None


@dataclass(frozen=True)
class RawStatus:
    table: str  # schema-qualified hypertable the rollups read
    future_rows: int  # rows dated after now + CLOCK_SKEW
    newest_future: datetime | None  # the latest of them; None too when it is 'infinity'


@dataclass(frozen=True)
class RollupHealth:
    checked_at: datetime
    sketch: SketchStatus | None
    rollups: list[RollupStatus]
    jobs: list[JobStatus]
    raw: list[RawStatus] = field(default_factory=list)
    # newest raw row behind each family of rollups (named <family>_<level>), future rows left out
    newest_raw: dict[str, datetime | None] = field(default_factory=dict)
    # closed buckets written into late, waiting for a scheduled run, per granularity
    stale: list[StaleStatus] = field(default_factory=list)


_ROLLUPS = """
select c.view_schema, c.view_name, c.hypertable_schema, c.hypertable_name,
  c.materialization_hypertable_schema, c.materialization_hypertable_name,
  f.bucket_width, not c.materialized_only,
  -- an empty rollup's watermark is the lowest timestamp there is, which Python cannot hold
  case when w.watermark > '1900-01-01'::timestamptz and pg_catalog.isfinite(w.watermark)
    then w.watermark end
from timescaledb_information.continuous_aggregates as c
join _timescaledb_catalog.hypertable as h
  on h.schema_name = c.materialization_hypertable_schema
  and h.table_name = c.materialization_hypertable_name
left join _timescaledb_catalog.continuous_aggs_bucket_function as f
  on f.mat_hypertable_id = h.id
cross join lateral (
  select _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(h.id))
    as watermark
) as w
where c.view_schema = %s
order by c.view_name
"""

_NEWEST_BUCKET = """
select pg_catalog.max(bucket) from {}
where bucket > '-infinity' and bucket <= pg_catalog.now() + %(skew)s
"""
_FUTURE_BUCKETS = """
select pg_catalog.count(distinct bucket),
  pg_catalog.max(bucket) filter (where pg_catalog.isfinite(bucket))
from {} where bucket > pg_catalog.now() + %(skew)s
"""

# TimescaleDB writes -infinity for "not set": the last successful finish of a job that never
# succeeded, the last start of a job rescheduled before its first run, the next start of a job
# that is running. Python cannot hold it, so it reads as NULL here.
_JOBS = """
select j.job_id, j.proc_name, j.hypertable_schema, j.hypertable_name, j.scheduled,
  j.schedule_interval,
  j.config, s.last_run_status,
  case when pg_catalog.isfinite(s.last_run_started_at) then s.last_run_started_at end,
  case when pg_catalog.isfinite(s.last_successful_finish) then s.last_successful_finish end,
  case when pg_catalog.isfinite(s.next_start) then s.next_start end,
  coalesce(s.total_runs, 0), coalesce(s.total_failures, 0),
  (select e.err_message from timescaledb_information.job_errors as e
    where e.job_id = j.job_id order by e.finish_time desc limit 1)
from timescaledb_information.jobs as j
left join timescaledb_information.job_stats as s on s.job_id = j.job_id
where j.hypertable_schema = %s
order by j.hypertable_name, j.job_id
"""

# The raw hypertables behind the rollups and their time columns.
_RAW_TABLES = {
    "traces": "started_at",
    "spans": "started_at",
    "span_events": "span_started_at",
    "document_events": "created_at",
}
_FUTURE_ROWS = """
select pg_catalog.count(*), pg_catalog.max({column}) filter (where pg_catalog.isfinite({column}))
from {table} where {column} > pg_catalog.now() + %(skew)s
"""
# The newest raw row behind each family of rollups, rows dated in the future left out.
_NEWEST_RAW = """
select 'traces', pg_catalog.max(started_at) from observability.traces
where started_at > '-infinity' and started_at <= pg_catalog.now() + %(skew)s
union all
select 'llm_spans', pg_catalog.max(started_at) from observability.spans
where span_type = 'llm'
  and started_at > '-infinity' and started_at <= pg_catalog.now() + %(skew)s
union all
select 'document_events', pg_catalog.max(created_at) from observability.document_events
where created_at > '-infinity' and created_at <= pg_catalog.now() + %(skew)s
"""

_KINDS = {
    "policy_refresh_continuous_aggregate": "refresh",
    "policy_compression": "compression",
    "policy_retention": "retention",
}


def _level(name: str) -> tuple[str, int]:
    """Display order: by source, then hour before day before week."""
    stem, _, level = name.rpartition("_")
    if level in BY_LEVEL:
        return (stem, CATALOGUE.index(BY_LEVEL[level]))
    return (name, -1)


def rollup_statuses(conn: psycopg.Connection[Any], now: datetime) -> list[RollupStatus]:
    statuses = []
    skew = {"skew": CLOCK_SKEW}
    for row in conn.execute(_ROLLUPS, [SCHEMA]).fetchall():
        view_schema, view, source_schema, source, mat_schema, mat_table = row[:6]
        width, real_time, watermark = row[6:]
        table = sql.Identifier(mat_schema, mat_table)
        newest = conn.execute(sql.SQL(_NEWEST_BUCKET).format(table), skew).fetchone()
        future = conn.execute(sql.SQL(_FUTURE_BUCKETS).format(table), skew).fetchone()
        newest_bucket = newest[0] if newest else None
        future_buckets, newest_future = future if future else (0, None)
        statuses.append(
            RollupStatus(
                name=f"{view_schema}.{view}",
                source=f"{source_schema}.{source}",
                bucket_width=str(width) if width is not None else "?",
                real_time=bool(real_time),
                newest_bucket=newest_bucket,
                watermark=watermark,
                # past now only when buckets ahead of the clock were materialized, which
                # future_buckets reports; a negative lag would read as "fresher than fresh"
                lag=max(now - watermark, timedelta(0)) if watermark is not None else None,
                future_buckets=int(future_buckets),
                newest_future_bucket=newest_future,
            )
        )
    return sorted(statuses, key=lambda s: _level(s.name))


def job_statuses(conn: psycopg.Connection[Any]) -> list[JobStatus]:
    jobs = []
    for row in conn.execute(_JOBS, [SCHEMA]).fetchall():
        job_id, proc, schema, table, scheduled, schedule, config, status = row[:8]
        started, finished, next_start, runs, failures, last_error = row[8:]
        jobs.append(
            JobStatus(
                job_id=job_id,
                kind=_KINDS.get(proc, proc),
                target=f"{schema}.{table}",
                scheduled=bool(scheduled),
                schedule_interval=schedule,
                config=dict(config or {}),
                last_run_status=status,
                last_run_started_at=started,
                last_successful_finish=finished,
                next_start=next_start,
                total_runs=int(runs),
                total_failures=int(failures),
                last_error=last_error,
            )
        )
    return sorted(jobs, key=lambda j: (_level(j.target), j.kind))


def raw_statuses(conn: psycopg.Connection[Any]) -> list[RawStatus]:
    statuses = []
    for table, column in _RAW_TABLES.items():
        statement = sql.SQL(_FUTURE_ROWS).format(
            table=sql.Identifier(SCHEMA, table), column=sql.Identifier(column)
        )
        row = conn.execute(statement, {"skew": CLOCK_SKEW}).fetchone()
        count, newest = row if row else (0, None)
        statuses.append(RawStatus(f"{SCHEMA}.{table}", int(count), newest))
    return statuses


def newest_raw(conn: psycopg.Connection[Any]) -> dict[str, datetime | None]:
    return dict(conn.execute(_NEWEST_RAW, {"skew": CLOCK_SKEW}).fetchall())


def rollup_health(conn: psycopg.Connection[Any]) -> RollupHealth:
    """What the database says about the rollups: sketch in use, freshness, policy jobs, raw
    rows dated ahead of the clock, which freshness leaves out, and late rows waiting to reach
    metrics_aggregates."""

    row = conn.execute("select pg_catalog.now()").fetchone()
    assert row is not None
    now = row[0]
    recorded = recorded_sketch(conn)
    sketch = SketchStatus(*recorded) if recorded is not None else None
    return RollupHealth(
        checked_at=now,
        sketch=sketch,
        rollups=rollup_statuses(conn, now),
        jobs=job_statuses(conn),
        raw=raw_statuses(conn),
        newest_raw=newest_raw(conn),
        stale=stale_statuses(conn),
    )
