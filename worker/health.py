from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from worker.sqltemplate import recorded_sketch

SCHEMA = "observability"


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
    newest_bucket: datetime | None  # start of the newest materialized bucket
    watermark: datetime | None  # materialized up to here (exclusive)
    lag: timedelta | None  # how far the watermark is behind now


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


@dataclass(frozen=True)
class RollupHealth:
    checked_at: datetime
    sketch: SketchStatus | None
    rollups: list[RollupStatus]
    jobs: list[JobStatus]


_ROLLUPS = """
select c.view_schema, c.view_name, c.hypertable_schema, c.hypertable_name,
  c.materialization_hypertable_schema, c.materialization_hypertable_name,
  f.bucket_width, not c.materialized_only,
  -- an empty rollup's watermark is the lowest timestamp there is, which Python cannot hold
  case when w.watermark > '1900-01-01'::timestamptz then w.watermark end
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

_NEWEST_BUCKET = "select pg_catalog.max(bucket) from {}"

_JOBS = """
select j.job_id, j.proc_name, j.hypertable_schema, j.hypertable_name, j.scheduled,
  j.schedule_interval,
  j.config, s.last_run_status, s.last_run_started_at, s.last_successful_finish,
  s.next_start, coalesce(s.total_runs, 0), coalesce(s.total_failures, 0),
  (select e.err_message from timescaledb_information.job_errors as e
    where e.job_id = j.job_id order by e.finish_time desc limit 1)
from timescaledb_information.jobs as j
left join timescaledb_information.job_stats as s on s.job_id = j.job_id
where j.hypertable_schema = %s
order by j.hypertable_name, j.job_id
"""

_KINDS = {
    "policy_refresh_continuous_aggregate": "refresh",
    "policy_compression": "compression",
    "policy_retention": "retention",
}

# Rollup level order for display: hour before day before week, then the name.
_LEVELS = {"hourly": 0, "daily": 1, "weekly": 2}


def _level(name: str) -> tuple[str, int]:
    stem, _, level = name.rpartition("_")
    if level in _LEVELS:
        return (stem, _LEVELS[level])
    return (name, -1)


def rollup_statuses(conn: psycopg.Connection[Any], now: datetime) -> list[RollupStatus]:
    statuses = []
    for row in conn.execute(_ROLLUPS, [SCHEMA]).fetchall():
        view_schema, view, source_schema, source, mat_schema, mat_table = row[:6]
        width, real_time, watermark = row[6:]
        newest = conn.execute(
            sql.SQL(_NEWEST_BUCKET).format(sql.Identifier(mat_schema, mat_table))
        ).fetchone()
        newest_bucket = newest[0] if newest else None
        statuses.append(
            RollupStatus(
                name=f"{view_schema}.{view}",
                source=f"{source_schema}.{source}",
                bucket_width=str(width) if width is not None else "?",
                real_time=bool(real_time),
                newest_bucket=newest_bucket,
                watermark=watermark,
                lag=now - watermark if watermark is not None else None,
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


def rollup_health(conn: psycopg.Connection[Any]) -> RollupHealth:
    """What the database says about the rollups: sketch in use, freshness, policy jobs."""
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
    )
