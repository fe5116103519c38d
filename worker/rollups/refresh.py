from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from worker.models.granularities import ROLLUP_SOURCES, levels_up_to, rollup_name
from worker.rollups.windows import Window, bucket_ceil, bucket_floor

T = TypeVar("T")


class ConcurrentRefresh(RuntimeError):
    """Another session is refreshing the same rollup (SQLSTATE 55P03): try again later."""


def retry_busy(
    attempt: Callable[[], T],
    retries: int,
    *,
    busy: tuple[type[BaseException], ...] = (ConcurrentRefresh,),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """attempt(), tried again up to `retries` times while it raises one of `busy` (another
    session holds the same rollup; it ends soon), pausing 1 s, then 2 s, 4 s, ..."""
    pause = 1.0
    for _ in range(retries):
        try:
            return attempt()
        except busy:
            sleep(pause)
            pause *= 2
    return attempt()


def refresh_rollup(
    conn: psycopg.Connection[Any],
    rollup: str,
    start: datetime,
    end: datetime,
    *,
    force: bool = False,
) -> None:
    """CALL refresh_continuous_aggregate on one rollup; ConcurrentRefresh on SQLSTATE 55P03."""
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


def rollups_for(granularity: str) -> list[tuple[str, str]]:
    """(continuous aggregate, its granularity) to refresh, lowest level first: day rolls up
    hourly rows and week rolls up daily rows, so a level is only as fresh as the ones below it."""
    return [
        (rollup_name(source, level.name), level.name)
        for level in levels_up_to(granularity)
        for source in ROLLUP_SOURCES
    ]


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
    for rollup, level in rollups_for(window.granularity):
        bounds = refresh_bounds(level, window.start, window.end, now=now, raw_horizon=raw_horizon)
        if bounds is None:
            continue
        refresh_rollup(conn, rollup, *bounds, force=force)
