from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from worker.models.granularities import BY_NAME, GRANULARITIES
from worker.rollups.sync import SyncCounts, sync_window
from worker.rollups.windows import BUCKET_WIDTHS, Window, bucket_floor

# Late data. Triggers on the raw hypertables (and the bulk writer, for rows it deletes) note
# every closed bucket that rows were written into in observability.stale_buckets
# (sql/incremental/019-stale-buckets.sql). After its own window, a scheduled run refreshes the
# rollups over the noted buckets of its granularity, syncs them into metrics_aggregates and
# deletes the notes it read, in the transaction of that sync.

_NOTED = """
select bucket, pg_catalog.array_agg(id)
from observability.stale_buckets
where granularity = %s and bucket < %s
group by bucket
order by bucket
"""
_CLEAR = "delete from observability.stale_buckets where id = any(%s)"
_WAITING = """
select granularity, pg_catalog.count(distinct bucket), pg_catalog.count(*),
  pg_catalog.min(bucket), pg_catalog.min(noted_at)
from observability.stale_buckets
group by granularity
"""


@dataclass
class NotedSync:
    buckets: int = 0  # distinct noted buckets refreshed and synced
    counts: SyncCounts = field(default_factory=SyncCounts)


@dataclass(frozen=True)
class StaleStatus:
    granularity: str
    buckets: int  # distinct buckets waiting
    notes: int
    oldest_bucket: datetime | None
    oldest_note: datetime | None  # when the longest-waiting note was written

    def waiting(self, now: datetime) -> timedelta:
        """How long the oldest note has waited; 0 when nothing waits."""
        if self.oldest_note is None:
            return timedelta(0)
        return max(now - self.oldest_note, timedelta(0))


def noted_windows(
    rows: list[tuple[datetime, list[int]]], granularity: str, size: int | None = None
) -> Iterator[tuple[Window, list[int]]]:
    """Runs of adjacent noted buckets as windows of at most `size` buckets (the batch size of
    the granularity), each with the ids of the notes it covers. rows are in bucket order."""
    width = BUCKET_WIDTHS[granularity]
    limit = size or BY_NAME[granularity].batch_buckets
    start: datetime | None = None
    end: datetime | None = None
    ids: list[int] = []
    for bucket, bucket_ids in rows:
        if start is None or end is None or bucket != end or (end - start) / width >= limit:
            if start is not None and end is not None:
                yield Window(granularity, start, end), ids
            start, ids = bucket, []
        end = bucket + width
        ids.extend(bucket_ids)
    if start is not None and end is not None:
        yield Window(granularity, start, end), ids


def sync_noted(
    conn: psycopg.Connection[Any],
    granularity: str,
    now: datetime,
    *,
    refresh: Callable[[Window], None],
    renew: Callable[[], None],
    size: int | None = None,
) -> NotedSync:
    """Refresh (with `refresh`, the run's own) and sync every noted bucket of this granularity
    that has closed by now, deleting the notes read once their bucket is synced. A note written
    while this works is not read, so it stays for the next run. conn is in autocommit mode."""
    rows = conn.execute(_NOTED, [granularity, bucket_floor(now, granularity)]).fetchall()
    done = NotedSync()
    for window, ids in noted_windows(rows, granularity, size):
        refresh(window)
        with conn.transaction():
            counts = sync_window(conn, window)
            conn.execute(_CLEAR, [ids])
        done.counts.add(counts)
        done.buckets += window.buckets
        renew()
    return done


def stale_statuses(conn: psycopg.Connection[Any]) -> list[StaleStatus]:
    """Per granularity (all three, zeros included), what waits for a scheduled run."""
    found = {row[0]: row for row in conn.execute(_WAITING).fetchall()}
    statuses = []
    for granularity in GRANULARITIES:
        _, buckets, notes, oldest_bucket, oldest_note = found.get(
            granularity, (granularity, 0, 0, None, None)
        )
        statuses.append(
            StaleStatus(granularity, int(buckets), int(notes), oldest_bucket, oldest_note)
        )
    return statuses
