from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from worker.rollups.sync import SyncCounts
from worker.rollups.windows import Window

_START = """
insert into observability.aggregation_runs (kind, granularity, range_start, range_end, done_until)
values (%s, %s, %s, %s, %s)
returning id
"""
_PROGRESS = """
update observability.aggregation_runs
set done_until = %(done_until)s, buckets = %(buckets)s, metrics_created = %(created)s,
  metrics_updated = %(updated)s, metrics_deleted = %(deleted)s
where id = %(id)s
"""
_FINISH = """
update observability.aggregation_runs
set status = %(status)s, error = %(error)s, finished_at = pg_catalog.now()
where id = %(id)s
"""
# Where the latest backfill of the same granularity and range stopped, when it did not finish
# (killed, interrupted, failed). A finished latest run means there is nothing to resume.
_UNFINISHED = """
select case when status <> 'succeeded' then done_until end
from observability.aggregation_runs
where kind = 'backfill' and granularity = %s and range_start = %s and range_end = %s
order by started_at desc, id desc
limit 1
"""
# Runs still marked running once their holder is gone: the caller holds the granularity's lease,
# so no live run can own them. Their worker was killed, or it lost the database and could not
# record why (it records that itself once it reaches the database again: record_failure).
ABANDONED_ERROR = (
    "abandoned: no worker holds its lease any more (its worker was killed, or lost the broker "
    "or the database before it could record the outcome); what it committed is kept up to "
    "done_until, and the rest is resumed"
)
_ABANDONED = """
update observability.aggregation_runs as r
set status = 'interrupted', error = %s, finished_at = pg_catalog.now()
where r.status = 'running' and r.granularity = %s
"""
# A failure recorded late (the database was unreachable when it happened); it replaces the
# abandoned note another run may have written meanwhile, never a recorded outcome.
_LATE_FAILURE = """
update observability.aggregation_runs
set status = 'failed', error = %(error)s, finished_at = coalesce(finished_at, pg_catalog.now())
where id = %(id)s and (status = 'running' or (status = 'interrupted' and error = %(abandoned)s))
"""
# Scheduled runs only: a backfill of an old range says nothing about the schedule's health.
_LAST_SUCCESS = """
select granularity, max(finished_at)
from observability.aggregation_runs
where status = 'succeeded' and kind = 'scheduled'
group by granularity
"""
# Where scheduled runs got to, counting the committed batches of one that did not finish (killed,
# stopped by its time limit): each starts at or before that point, so what lies before it is
# synced, and the next run resumes there instead of starting over.
_LAST_SCHEDULED_END = """
select max(done_until) from observability.aggregation_runs
where kind = 'scheduled' and granularity = %s
"""


@dataclass
class RunRecord:
    id: int
    buckets: int = 0


def start_run(
    conn: psycopg.Connection[Any], kind: str, window: Window, done_until: datetime | None = None
) -> RunRecord:
    row = conn.execute(
        _START,
        [kind, window.granularity, window.start, window.end, done_until or window.start],
    ).fetchone()
    assert row is not None
    return RunRecord(id=int(row[0]))


def record_progress(
    conn: psycopg.Connection[Any], run: RunRecord, done_until: datetime, counts: SyncCounts
) -> None:
    conn.execute(
        _PROGRESS,
        {
            "id": run.id,
            "done_until": done_until,
            "buckets": run.buckets,
            "created": counts.created,
            "updated": counts.updated,
            "deleted": counts.deleted,
        },
    )


def finish_run(
    conn: psycopg.Connection[Any], run: RunRecord, status: str, error: str | None = None
) -> None:
    conn.execute(_FINISH, {"id": run.id, "status": status, "error": error})


def mark_abandoned(conn: psycopg.Connection[Any], granularity: str) -> None:
    """Close runs left 'running' by a dead worker. Call only while holding the lease."""
    conn.execute(_ABANDONED, [ABANDONED_ERROR, granularity])


def record_failure(conn: psycopg.Connection[Any], run_id: int, error: str) -> None:
    """Record why a run failed after the fact, unless its outcome is already recorded."""
    conn.execute(_LATE_FAILURE, {"id": run_id, "error": error, "abandoned": ABANDONED_ERROR})


def unfinished_backfill(conn: psycopg.Connection[Any], window: Window) -> datetime | None:
    row = conn.execute(_UNFINISHED, [window.granularity, window.start, window.end]).fetchone()
    return row[0] if row else None


def last_scheduled_end(conn: psycopg.Connection[Any], granularity: str) -> datetime | None:
    """Up to where the last successful scheduled run synced."""
    row = conn.execute(_LAST_SCHEDULED_END, [granularity]).fetchone()
    return row[0] if row else None


def last_successes(conn: psycopg.Connection[Any]) -> dict[str, datetime]:
    return {granularity: at for granularity, at in conn.execute(_LAST_SUCCESS).fetchall()}


@dataclass(frozen=True)
class GranularityStatus:
    granularity: str
    last_success: datetime | None  # of a scheduled run
    last_run_kind: str | None
    last_run_status: str | None
    last_run_started_at: datetime | None
    last_error: str | None
    done_until: datetime | None  # progress of the latest run


_STATUS = """
select g.granularity, s.last_success, r.kind, r.status, r.started_at, r.error, r.done_until
from (select name as granularity, position from observability.granularities) as g
left join lateral (
  select max(finished_at) as last_success from observability.aggregation_runs
  where granularity = g.granularity and status = 'succeeded' and kind = 'scheduled'
) as s on true
left join lateral (
  select kind, status, started_at, error, done_until from observability.aggregation_runs
  where granularity = g.granularity
  order by started_at desc, id desc
  limit 1
) as r on true
order by g.position
"""


def granularity_statuses(conn: psycopg.Connection[Any]) -> list[GranularityStatus]:
    return [GranularityStatus(*row) for row in conn.execute(_STATUS).fetchall()]
