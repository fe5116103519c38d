from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from worker.ingest.validation import Invalid
from worker.schema.retention import horizon_at, retention

DEFAULT_MAX_FUTURE = timedelta(hours=1)
# The retention settings change rarely; reading them costs a catalog query, so each connection
# reads them again after this long.
RETENTION_CACHE_S = 60.0
# The oldest representable time, for "no lower bound" in queries that take a bound.
NO_HORIZON = datetime(1, 1, 1, tzinfo=UTC)
_CACHE: weakref.WeakKeyDictionary[
    psycopg.Connection[Any], tuple[float, tuple[timedelta | None, timedelta | None]]
] = weakref.WeakKeyDictionary()


def lower_bound(horizon: datetime | None) -> datetime:
    """A bound for "started_at >= %s" queries: the horizon, or none."""
    return horizon or NO_HORIZON


@dataclass(frozen=True)
class TimePolicy:
    """Which times the writers accept. An item that starts more than max_future after now (a
    clock far off) or before the raw retention horizon (its rows would be dropped, and the
    rollups could never keep it) is refused with the reason."""

    now: datetime
    horizon: datetime | None
    max_future: timedelta = DEFAULT_MAX_FUTURE

    @property
    def latest(self) -> datetime:
        return self.now + self.max_future

    @property
    def lower_bound(self) -> datetime:
        return lower_bound(self.horizon)

    def check(self, column: str, value: datetime, *, retained: bool = True) -> None:
        if value > self.latest:
            raise Invalid(
                f"{column} {value.isoformat()} is more than {_span(self.max_future)} in the "
                f"future (now {self.now.isoformat()}): check the sender's clock"
            )
        if retained and self.horizon is not None and value < self.horizon:
            raise Invalid(
                f"{column} {value.isoformat()} is before the raw-data retention horizon "
                f"{self.horizon.isoformat()}: retention would drop it"
            )


def current_policy(
    conn: psycopg.Connection[Any], max_future: timedelta = DEFAULT_MAX_FUTURE
) -> TimePolicy:
    """The policy in force now for this connection's database."""
    now = datetime.now(UTC)
    cached = _CACHE.get(conn)
    if cached is None or time.monotonic() - cached[0] > RETENTION_CACHE_S:
        cached = (time.monotonic(), retention(conn))
        _CACHE[conn] = cached
    return TimePolicy(now, horizon_at(now, *cached[1]), max_future)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{seconds} s"
