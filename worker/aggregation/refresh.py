from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from worker.aggregation.windows import Window, bucket_ceil, bucket_floor

SOURCES = ("traces", "llm_spans", "document_events")
LEVELS = ("hourly", "daily", "weekly")
_LEVEL_OF = {"hour": 1, "day": 2, "week": 3}
_GRANULARITY_OF = {"hourly": "hour", "daily": "day", "weekly": "week"}


class ConcurrentRefresh(RuntimeError):
    """Another session is refreshing the same rollup (SQLSTATE 55P03): try again later."""


def rollups_for(granularity: str) -> list[str]:
    """The continuous aggregates to refresh, lowest level first: day rolls up hourly rows and
    week rolls up daily rows, so a level is only as fresh as the ones below it."""
    levels = LEVELS[: _LEVEL_OF[granularity]]
    return [f"observability.{source}_{level}" for level in levels for source in SOURCES]


def refresh_bounds(
    level: str,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None,
    raw_horizon: datetime | None,
) -> tuple[datetime, datetime] | None:
    """The part of [start, end) a rollup of this level (hour, day, week) may be refreshed over:
    whole buckets that have ended by now and, for the hourly level (which reads raw rows), that
    retention has not touched. None when nothing is left."""
    if raw_horizon is not None and level == "hour":
        start = max(start, bucket_ceil(raw_horizon, "hour"))
    if now is not None:
        end = min(end, bucket_floor(now, level))
    return (start, end) if start < end else None


def refresh_rollups(
    conn: psycopg.Connection[Any],
    window: Window,
    *,
    force: bool = False,
    raw_horizon: datetime | None = None,
    now: datetime | None = None,
) -> None:
    """CALL refresh_continuous_aggregate over the window for every level up to its granularity.

    Each level is refreshed only up to its last complete bucket before now. Materializing a
    bucket that is still open would move the watermark past it, and its later rows would stay
    out of the rollup (real-time aggregation reads only beyond the watermark) until a policy
    refreshed it again: up to a day for the daily level, a week for the weekly one.

    The hourly level reads raw rows, so it is refreshed only from raw_horizon on (the oldest
    hour retention has not touched): refreshing it over dropped raw rows would delete its rows.
    The daily and weekly levels read the hourly and daily rollups, which are kept.
    conn must be in autocommit mode: the procedure refuses to run inside a transaction block.
    """
    if not conn.autocommit:
        raise ValueError("refresh_continuous_aggregate needs an autocommit connection")
    for rollup in rollups_for(window.granularity):
        level = _GRANULARITY_OF[rollup.rpartition("_")[2]]
        bounds = refresh_bounds(level, window.start, window.end, now=now, raw_horizon=raw_horizon)
        if bounds is None:
            continue
        start, end = bounds
        statement = sql.SQL("call public.refresh_continuous_aggregate({}, {}, {}{})").format(
            sql.Literal(rollup),
            sql.Literal(start),
            sql.Literal(end),
            sql.SQL(", force => true") if force else sql.SQL(""),
        )
        try:
            conn.execute(statement)
        except psycopg.errors.LockNotAvailable as exc:
            message = f"{rollup} is being refreshed by another session: {exc}"
            raise ConcurrentRefresh(message) from exc
