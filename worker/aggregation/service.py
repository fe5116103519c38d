from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from worker import metrics
from worker.aggregation.leases import LeaseBusy, acquire
from worker.aggregation.refresh import ConcurrentRefresh, refresh_rollups
from worker.aggregation.runs import (
    finish_run,
    last_scheduled_end,
    mark_abandoned,
    record_progress,
    start_run,
    unfinished_backfill,
)
from worker.aggregation.stale import NotedSync, sync_noted
from worker.aggregation.sync import SyncCounts, sync_window
from worker.aggregation.windows import (
    BUCKET_WIDTHS,
    InvalidWindow,
    Window,
    aligned_window,
    bucket_ceil,
    check_granularity,
    default_window,
)
from worker.health import CLOCK_SKEW
from worker.retention import raw_horizon
from worker.settings import WorkerSettings

log = logging.getLogger("worker.aggregation")

Progress = Callable[[Window, SyncCounts], None]

CONNECT_TIMEOUT_SECONDS = 10
# How far a scheduled run reaches back to where the last successful one stopped.
CATCH_UP_BUCKETS = {"hour": 7 * 24, "day": 31, "week": 8}
# Backfills wait out another session's refresh of the same rollup (55P03) this many times,
# doubling the pause from one second; scheduled runs leave retrying to Celery.
BACKFILL_REFRESH_RETRIES = 6


class RangeBeyondRetention(InvalidWindow):
    """The window reaches back past the raw-data retention horizon."""


class WindowInFuture(InvalidWindow):
    """The window ends after the bucket that holds now: nothing there can exist yet, and the
    run would be recorded as synced up to that end."""


class MissingDatabaseUrl(RuntimeError):
    pass


def backfill_window(granularity: str, start: datetime, end: datetime, now: datetime) -> Window:
    """The whole buckets covering [start, end), refused when they reach past the bucket that
    holds now + CLOCK_SKEW (a caller whose clock is a little ahead of ours is not refused).
    Ending in that still-open bucket is allowed: it is synced as it stands, and scheduled runs
    complete it once it has closed."""
    window = aligned_window(granularity, start, end)
    limit = bucket_ceil(now + CLOCK_SKEW, granularity)
    if window.end > limit:
        raise WindowInFuture(
            f"the window ends at {end.isoformat()}, after the {granularity} bucket that holds "
            f"now (it ends at {limit.isoformat()}): there is nothing to aggregate there yet, "
            f"and the range would be recorded as synced. End at or before {limit.isoformat()}."
        )
    return window


def aggregate_observability_metrics(
    granularity: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    database_url: str | None = None,
    now: datetime | None = None,
    force: bool = False,
    task_id: str | None = None,
) -> dict[str, Any]:
    """Refresh the rollups over a window and sync its rows into metrics_aggregates.

    Without start and end this is the scheduled run: the latest complete bucket and the one
    before it, reaching further back (up to CATCH_UP_BUCKETS) to where the last successful
    scheduled run stopped, so runs that failed or never happened leave no hole. Raises LeaseBusy
    when another run of this granularity is under way, and ConcurrentRefresh when another
    session refreshes the same rollup: both mean "try again later".
    """
    check_granularity(granularity)
    now = now or datetime.now(UTC)
    if start is None and end is None:
        window = default_window(granularity, now)
        return _run("scheduled", window, _url(database_url), now=now, force=force, task_id=task_id)
    if start is None or end is None:
        raise InvalidWindow("pass both start and end, or neither (the latest complete buckets)")
    window = backfill_window(granularity, start, end, now)
    return _run(
        "backfill",
        window,
        _url(database_url),
        now=now,
        force=force,
        requested_start=start,
        task_id=task_id,
    )


def backfill_metrics(
    start: datetime,
    end: datetime,
    granularity: str,
    *,
    database_url: str | None = None,
    now: datetime | None = None,
    force: bool = False,
    resume: bool = False,
    wait_seconds: float = 0.0,
    progress: Progress | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    """Walk [start, end) in bounded batches: refresh, sync, record progress after each batch.

    resume continues the latest backfill of the same range if it did not finish.
    wait_seconds is how long to wait for another run of this granularity to finish before
    giving up with LeaseBusy. A window that ends after the bucket holding now is refused with
    WindowInFuture (see backfill_window).
    """
    now = now or datetime.now(UTC)
    window = backfill_window(granularity, start, end, now)
    return _run(
        "backfill",
        window,
        _url(database_url),
        now=now,
        force=force,
        resume=resume,
        wait_seconds=wait_seconds,
        progress=progress,
        refresh_retries=BACKFILL_REFRESH_RETRIES,
        requested_start=start,
        task_id=task_id,
    )


def _url(database_url: str | None) -> str:
    url = database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise MissingDatabaseUrl("no database: pass database_url or set DATABASE_URL")
    return url


def check_retention(
    requested_start: datetime, horizon: datetime | None, retention_days: int | None = None
) -> None:
    if horizon is not None and requested_start < horizon:
        days = f"{retention_days} days, " if retention_days is not None else ""
        raise RangeBeyondRetention(
            f"the window starts at {requested_start.isoformat()}, before the raw-data retention "
            f"horizon {horizon.isoformat()} ({days}whole chunks): raw rows older than that may "
            "be dropped, and refreshing the rollups there would delete their rows. Start later."
        )


def _catch_up(conn: psycopg.Connection[Any], window: Window) -> Window:
    last_end = last_scheduled_end(conn, window.granularity)
    if last_end is None or last_end >= window.start:
        return window
    limit = window.end - CATCH_UP_BUCKETS[window.granularity] * BUCKET_WIDTHS[window.granularity]
    return Window(window.granularity, max(last_end, limit), window.end)


def _run(
    kind: str,
    window: Window,
    url: str,
    *,
    now: datetime,
    force: bool,
    resume: bool = False,
    wait_seconds: float = 0.0,
    progress: Progress | None = None,
    refresh_retries: int = 0,
    requested_start: datetime | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    settings = WorkerSettings.from_env()
    counts = SyncCounts()
    outcome = "failure"
    resume_from = None
    noted = NotedSync()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            horizon = raw_horizon(conn, now)
            if requested_start is not None and horizon is not None:
                check_retention(requested_start, horizon, (now - horizon).days)
            with acquire(
                conn,
                f"aggregation:{window.granularity}",
                timedelta(seconds=settings.lease_ttl),
                task_id=task_id,
                wait_seconds=wait_seconds,
            ) as lease:
                lease.keep_alive(url)
                mark_abandoned(conn, window.granularity)
                if kind == "scheduled":
                    window = _catch_up(conn, window)
                resume_from = unfinished_backfill(conn, window) if resume else None
                run = start_run(conn, kind, window, resume_from)
                try:
                    for batch in Window(
                        window.granularity, resume_from or window.start, window.end
                    ).batches(settings.batch_buckets or None):
                        _refresh(conn, batch, force, refresh_retries, horizon, now)
                        counts.add(sync_window(conn, batch))
                        run.buckets += batch.buckets
                        record_progress(conn, run, batch.end, counts)
                        lease.renew()
                        if progress is not None:
                            progress(batch, counts)
                    if kind == "scheduled":
                        # Late rows in older buckets (worker/aggregation/stale.py).
                        def refresh(batch: Window) -> None:
                            _refresh(conn, batch, force, refresh_retries, horizon, now)

                        noted = sync_noted(
                            conn, window.granularity, now, refresh=refresh, renew=lease.renew
                        )
                        counts.add(noted.counts)
                        record_progress(conn, run, window.end, counts)
                except BaseException as exc:
                    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                    # If the database went away, the next run marks this one abandoned.
                    with suppress(psycopg.Error):
                        finish_run(conn, run, status, f"{type(exc).__name__}: {exc}")
                    raise
                finish_run(conn, run, "succeeded")
        outcome = "success"
    except (LeaseBusy, ConcurrentRefresh):
        outcome = "busy"
        raise
    finally:
        duration = time.perf_counter() - started
        _observe(window.granularity, outcome, duration, counts.processed, kind == "scheduled")
    return {
        "kind": kind,
        "granularity": window.granularity,
        "window": window.as_dict(),
        "resumed_from": resume_from.isoformat() if resume_from else None,
        "buckets": run.buckets,
        "late_buckets": noted.buckets,
        "metrics_created": counts.created,
        "metrics_updated": counts.updated,
        "metrics_deleted": counts.deleted,
        "records_processed": counts.processed,
        "duration": round(duration, 3),
        "run_id": run.id,
    }


def _observe(granularity: str, outcome: str, seconds: float, records: int, scheduled: bool) -> None:
    # The work is done (or failed for its own reason); a broken metrics directory must not turn
    # that into a different error.
    try:
        metrics.observe_run(granularity, outcome, seconds, records, scheduled=scheduled)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record the run's Prometheus metrics: %s", exc)


def _refresh(
    conn: psycopg.Connection[Any],
    batch: Window,
    force: bool,
    retries: int,
    horizon: datetime | None,
    now: datetime,
) -> None:
    pause = 1.0
    for attempt in range(retries + 1):
        try:
            refresh_rollups(conn, batch, force=force, raw_horizon=horizon, now=now)
            return
        except ConcurrentRefresh:
            if attempt == retries:
                raise
            time.sleep(pause)
            pause *= 2
