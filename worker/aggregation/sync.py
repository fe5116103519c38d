from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from worker.aggregation.windows import Window

# Copies the rolled-up rows of one window from observability.metrics (the continuous aggregates,
# real-time included) into metrics_aggregates. A row is only rewritten when a value changed, so a
# rerun over unchanged data writes nothing and created/updated count real changes. xmax = 0 marks
# a row this statement inserted rather than updated.
_UPSERT = """
with upserted as (
  insert into observability.metrics_aggregates as a
    ( bucket_time, granularity, metric_type, dimension_type, dimension_value, count
    , sum_value, min_value, max_value, avg_value, p50_value, p95_value, p99_value )
  select m.bucket, m.granularity, m.metric_type, m.dimension_type, m.dimension_value, m.count
    , m.sum, m.min, m.max, m.avg, m.p50, m.p95, m.p99
  from observability.metrics as m
  where m.granularity = %(granularity)s
    and m.bucket >= %(start)s and m.bucket < %(end)s
  on conflict on constraint metrics_aggregates_pkey do update set
    count = excluded.count, sum_value = excluded.sum_value, min_value = excluded.min_value
  , max_value = excluded.max_value, avg_value = excluded.avg_value
  , p50_value = excluded.p50_value, p95_value = excluded.p95_value
  , p99_value = excluded.p99_value, updated_at = pg_catalog.now()
  where (a.count, a.sum_value, a.min_value, a.max_value, a.avg_value, a.p50_value
      , a.p95_value, a.p99_value)
    is distinct from (excluded.count, excluded.sum_value, excluded.min_value
      , excluded.max_value, excluded.avg_value, excluded.p50_value, excluded.p95_value
      , excluded.p99_value)
  returning (a.xmax = 0) as inserted
)
select count(*) filter (where inserted), count(*) filter (where not inserted) from upserted
"""

# Rows whose source is gone (raw rows deleted, a value recomputed into another dimension value):
# without this, a rerun would not leave exactly what an undisturbed run leaves.
_DELETE_STALE = """
delete from observability.metrics_aggregates as a
where a.granularity = %(granularity)s
  and a.bucket_time >= %(start)s and a.bucket_time < %(end)s
  and not exists (
    select from observability.metrics as m
    where m.granularity = a.granularity and m.bucket = a.bucket_time
      and m.metric_type = a.metric_type and m.dimension_type = a.dimension_type
      and m.dimension_value = a.dimension_value
  )
"""


@dataclass
class SyncCounts:
    created: int = 0
    updated: int = 0
    deleted: int = 0

    def add(self, other: SyncCounts) -> None:
        self.created += other.created
        self.updated += other.updated
        self.deleted += other.deleted

    @property
    def processed(self) -> int:
        return self.created + self.updated + self.deleted


def sync_window(conn: psycopg.Connection[Any], window: Window) -> SyncCounts:
    """Upsert the window's rollup rows into metrics_aggregates in one transaction."""
    params = {"granularity": window.granularity, "start": window.start, "end": window.end}
    with conn.transaction():
        row = conn.execute(_UPSERT, params).fetchone()
        deleted = conn.execute(_DELETE_STALE, params).rowcount
    created, updated = row if row is not None else (0, 0)
    return SyncCounts(created=int(created), updated=int(updated), deleted=max(deleted, 0))
