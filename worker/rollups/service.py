from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from billiard.exceptions import SoftTimeLimitExceeded

from worker.clock import CLOCK_SKEW
from worker.models.granularities import BY_NAME
from worker.rollups import metrics, outcomes
from worker.rollups.connections import connect
from worker.rollups.leases import DatabaseUnresponsive, LeaseBusy, acquire
from worker.rollups.refresh import ConcurrentRefresh, refresh_rollups, retry_busy
from worker.rollups.runs import (
    RunRecord,
    finish_run,
    last_scheduled_end,
    mark_abandoned,
    record_progress,
    start_run,
    unfinished_backfill,
)
from worker.rollups.stale import NotedSync, sync_noted
from worker.rollups.sync import SyncCounts, sync_window
from worker.rollups.windows import (
    InvalidWindow,
    Window,
    aligned_window,
    bucket_ceil,
    check_granularity,
    default_window,
)
from worker.schema.retention import raw_horizon
from worker.settings import WorkerSettings

log = logging.getLogger("worker.rollups")

Progress = Callable[[Window, SyncCounts], None]

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
    settings: WorkerSettings | None = None,
) -> dict[str, Any]:
    """Refresh the rollups over a window and sync its rows into metrics_aggregates.

    Without start and end this is the scheduled run: the latest complete bucket and the one
    before it, reaching further back (up to the catalogue's catch_up_buckets) to where the last
    successful scheduled run stopped, so runs that failed or never happened leave no hole. Raises
    LeaseBusy when another run of this granularity is under way, and ConcurrentRefresh when another
    session refreshes the same rollup: both mean "try again later".
    """
    check_granularity(granularity)
    now = now or datetime.now(UTC)
    if start is None and end is None:
        window = default_window(granularity, now)
        url = _url(database_url)
        summary = _run(
            "scheduled", window, url, now=now, force=force, task_id=task_id, settings=settings
        )
        # Backfills whose worker died and whose task will not come back (it was not sent by
        # Celery, or the broker lost it) are taken up by the next scheduled run.
        summary["resumed_backfills"] = outcomes.resume_unfinished_backfills(
            granularity, url, now, functools.partial(backfill_metrics, settings=settings)
        )
        return summary
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
        settings=settings,
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
    settings: WorkerSettings | None = None,
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
        settings=settings,
    )


def _url(database_url: str | None) -> str:
    if not database_url:
        raise MissingDatabaseUrl("no database: pass database_url (DATABASE_URL, at the edge)")
    return database_url


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
    granularity = BY_NAME[window.granularity]
    limit = window.end - granularity.catch_up_buckets * granularity.width
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
    settings: WorkerSettings | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    # Callers read the environment at their edge; without settings, the defaults.
    settings = settings or WorkerSettings.from_env({})
    counts = SyncCounts()
    outcome = "failure"
    resume_from = None
    noted = NotedSync()
    try:
        with connect(url, statement_timeout=settings.statement_timeout) as conn:
            outcomes.record_unrecorded(conn)
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
                lease.keep_alive(url, unresponsive_after=settings.unresponsive_timeout)
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
                        synced = sync_window(conn, batch)
                        counts.add(synced)
                        run.buckets += batch.buckets
                        record_progress(conn, run, batch.end, counts)
                        _committed(window.granularity, synced.processed)
                        lease.renew()
                        if progress is not None:
                            progress(batch, counts)
                    if kind == "scheduled":
                        # Late rows in older buckets (worker/rollups/stale.py).
                        def refresh(batch: Window) -> None:
                            _refresh(conn, batch, force, refresh_retries, horizon, now)

                        noted = sync_noted(
                            conn, window.granularity, now, refresh=refresh, renew=lease.renew
                        )
                        counts.add(noted.counts)
                        record_progress(conn, run, window.end, counts)
                except BaseException as exc:
                    # Stopped (interrupted, or by the task's time limit: it resumes) or failed.
                    stopped = isinstance(exc, KeyboardInterrupt | SoftTimeLimitExceeded)
                    status = "interrupted" if stopped else "failed"
                    failure = _unresponsive(exc, lease.unresponsive_for)
                    error = f"{type(failure).__name__}: {failure}"
                    _record_failure(conn, url, run, status, error)
                    if failure is not exc:
                        raise failure from exc
                    raise
                finish_run(conn, run, "succeeded")
        outcome = "success"
    except (LeaseBusy, ConcurrentRefresh):
        outcome = "busy"
        raise
    except SoftTimeLimitExceeded:
        outcome = "stopped"  # not a failure: the task resumes where it stopped
        raise
    finally:
        duration = time.perf_counter() - started
        _observe(window.granularity, outcome, duration, kind == "scheduled")
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


def _observe(granularity: str, outcome: str, seconds: float, scheduled: bool) -> None:
    # The work is done (or failed for its own reason); a broken metrics directory must not turn
    # that into a different error.
    try:
        metrics.observe_run(granularity, outcome, seconds, 0, scheduled=scheduled)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record the run's Prometheus metrics: %s", exc)


def _record_failure(
    conn: psycopg.Connection[Any], url: str, run: RunRecord, status: str, error: str
) -> None:
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
        # Interrupted mid-statement (a time limit): stop the statement, record on a new session.
        with suppress(psycopg.Error):
            conn.cancel_safe(timeout=5)
        with suppress(psycopg.Error):
            conn.close()
    try:
        if conn.closed:
            with connect(url, connect_timeout=5) as other:
                finish_run(other, run, status, error)
        else:
            finish_run(conn, run, status, error)
    except psycopg.Error:
        # The database is gone: the next run in this process records it.
        outcomes.remember(run.id, error)


def _unresponsive(exc: BaseException, silent_for: float | None) -> BaseException:
    if silent_for is None:
        return exc
    return DatabaseUnresponsive(
        f"the database did not answer for {silent_for:.0f} s "
        f"(OBSERVABILITY_DB_UNRESPONSIVE_TIMEOUT), so the run was aborted: {exc}"
    )


def _committed(granularity: str, records: int) -> None:
    # Counted batch by batch as each is committed, so an attempt killed later still counts them.
    try:
        metrics.records_committed(granularity, records)
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
    retry_busy(
        lambda: refresh_rollups(conn, batch, force=force, raw_horizon=horizon, now=now), retries
    )
