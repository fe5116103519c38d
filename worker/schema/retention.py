from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The raw tables' retention (the shortest drop_after) and their narrowest chunk. Rows older than
# now - retention, floored to a whole chunk, may already be gone or go with the next retention
# run; the rollups can never materialize them for good.
_RETENTION = """
select pg_catalog.min((j.config ->> 'drop_after')::interval),
  (select pg_catalog.min(d.time_interval) from timescaledb_information.dimensions as d
    where d.hypertable_schema = 'observability'
      and d.hypertable_name in ('traces', 'spans', 'span_events', 'document_events'))
from timescaledb_information.jobs as j
where j.proc_name = 'policy_retention' and j.hypertable_schema = 'observability'
  and j.hypertable_name in ('traces', 'spans', 'span_events', 'document_events')
"""


def retention(conn: psycopg.Connection[Any]) -> tuple[timedelta | None, timedelta | None]:
    """(retention of the raw tables, their narrowest chunk width); None where unset."""
    row = conn.execute(_RETENTION).fetchone()
    return (row[0], row[1]) if row else (None, None)


def horizon_at(
    now: datetime, retained: timedelta | None, chunk: timedelta | None
) -> datetime | None:
    """The oldest time whose raw rows retention keeps: now - retention, floored to a chunk."""
    if retained is None:
        return None
    horizon = now - retained
    if chunk:
        horizon = _EPOCH + ((horizon - _EPOCH) // chunk) * chunk
    return horizon


def raw_horizon(conn: psycopg.Connection[Any], now: datetime) -> datetime | None:
    """The oldest time whose raw rows retention has not dropped (None without retention)."""
    return horizon_at(now, *retention(conn))
