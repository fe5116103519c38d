from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from worker.rollups.windows import Window

# Copies the rolled-up rows of one window from observability.metrics (the continuous aggregates,
# real-time included) into metrics_aggregates, in one statement over one reading of the view:
#   * a row is only rewritten when a value changed, so a rerun over unchanged data writes
#     nothing, and created/updated count real changes (xmax = 0 marks an inserted row);
#   * rows whose source is gone (raw rows deleted, a value moved to another dimension value) are
#     deleted, so a rerun leaves exactly what an undisturbed run leaves. The delete sees the
#     table as it was before the statement, so it never touches a row the insert just wrote.
_SYNC = """
with source as materialized (
  select m.bucket, m.granularity, m.metric_type, m.dimension_type, m.dimension_value, m.count
    , m.sum, m.min, m.max, m.avg, m.p50, m.p95, m.p99
  from observability.metrics as m
  where m.granularity = %(granularity)s
    and m.bucket >= %(start)s and m.bucket < %(end)s
), upserted as (
  insert into observability.metrics_aggregates as a
    ( bucket_time, granularity, metric_type, dimension_type, dimension_value, count
    , sum_value, min_value, max_value, avg_value, p50_value, p95_value, p99_value )
  select * from source
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
), deleted as (
  delete from observability.metrics_aggregates as a
  where a.granularity = %(granularity)s
    and a.bucket_time >= %(start)s and a.bucket_time < %(end)s
    and not exists (
      select from source as s
      where s.bucket = a.bucket_time and s.metric_type = a.metric_type
        and s.dimension_type = a.dimension_type and s.dimension_value = a.dimension_value
    )
  returning 1
)
select
  (select pg_catalog.count(*) from upserted where inserted),
  (select pg_catalog.count(*) from upserted where not inserted),
  (select pg_catalog.count(*) from deleted)
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
        row = conn.execute(_SYNC, params).fetchone()
    created, updated, deleted = row if row is not None else (0, 0, 0)
    return SyncCounts(created=int(created), updated=int(updated), deleted=int(deleted))
