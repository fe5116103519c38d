from __future__ import annotations

import inspect
from datetime import datetime
from typing import Any

import psycopg
from celery import Celery, Task, states
from celery.exceptions import SoftTimeLimitExceeded

from worker import rollups
from worker.rollups import metrics
from worker.rollups.windows import GRANULARITIES
from worker.settings import WorkerSettings

# Task names are what brokers and beat schedules carry, so they stay fixed whichever module
# defines the tasks.
AGGREGATE_TASK = "worker.tasks.aggregate_observability_metrics"
BACKFILL_TASK = "worker.tasks.backfill_observability_metrics"

# Worth another try later: the database is unreachable, or another run holds the granularity
# or refreshes the same rollup. Bad arguments (InvalidWindow) fail at once.
RETRYABLE = (psycopg.OperationalError, rollups.LeaseBusy, rollups.ConcurrentRefresh)


class AggregationTask(Task):  # type: ignore[misc]
    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Failed for good: retries exhausted, or an argument no retry can fix.
        try:
            arguments = inspect.signature(self.run).bind(*args, **kwargs).arguments
        except TypeError:
            return
        granularity = arguments.get("granularity")
        if granularity not in GRANULARITIES:
            metrics.bad_request("unknown_granularity")
            return
        if isinstance(exc, rollups.InvalidWindow):
            metrics.bad_request(_bad_request_reason(exc))
        metrics.task_failed(granularity)


def _bad_request_reason(exc: rollups.InvalidWindow) -> str:
    if isinstance(exc, rollups.WindowInFuture):
        return "future_window"
    if isinstance(exc, rollups.RangeBeyondRetention):
        return "past_retention"
    return "invalid_window"


# A task stopped by its soft time limit has committed its batches; it is sent again at once and
# resumes where it stopped (backfills from done_until, scheduled runs from the last synced
# bucket), up to this many times on top of the retries for errors.
MAX_RESUMES = 48


def _already_done(task: Task) -> dict[str, Any] | None:
    """The result of an earlier delivery of this task id that succeeded (Redis hands a task out
    again when its acknowledgement was lost, e.g. with the broker down when it finished)."""
    try:
        result = task.AsyncResult(task.request.id)
        if result.state == states.SUCCESS and isinstance(result.result, dict):
            return result.result
    except Exception:  # noqa: BLE001 - no result backend answer: run the task
        return None
    return None


def _resume_after_time_limit(
    task: Task, settings: WorkerSettings, exc: SoftTimeLimitExceeded
) -> Exception:
    return task.retry(
        exc=exc, countdown=1, max_retries=settings.max_retries + MAX_RESUMES, throw=False
    )


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def aggregate(
    task: Task,
    settings: WorkerSettings,
    granularity: str,
    start: str | None = None,
    end: str | None = None,
) -> dict[str, Any]:
    if (done := _already_done(task)) is not None:
        return done
    try:
        return rollups.aggregate_observability_metrics(
            granularity,
            _time(start),
            _time(end),
            database_url=settings.database_url,
            task_id=task.request.id,
            settings=settings,
        )
    except SoftTimeLimitExceeded as exc:
        raise _resume_after_time_limit(task, settings, exc) from exc


def backfill(
    task: Task, settings: WorkerSettings, start: str, end: str, granularity: str
) -> dict[str, Any]:
    if (done := _already_done(task)) is not None:
        return done
    start_time, end_time = _time(start), _time(end)
    if start_time is None or end_time is None:
        raise rollups.InvalidWindow("a backfill needs both start and end")
    try:
        return rollups.backfill_metrics(
            start_time,
            end_time,
            granularity,
            database_url=settings.database_url,
            resume=True,
            task_id=task.request.id,
            settings=settings,
        )
    except SoftTimeLimitExceeded as exc:
        raise _resume_after_time_limit(task, settings, exc) from exc


def register_tasks(app: Celery, settings: WorkerSettings) -> None:
    options: dict[str, Any] = {
        "base": AggregationTask,
        "bind": True,
        "acks_late": True,
        "autoretry_for": RETRYABLE,
        "retry_backoff": settings.retry_backoff,
        "retry_backoff_max": settings.retry_backoff_max,
        "retry_jitter": True,
        "max_retries": settings.max_retries,
    }

    @app.task(name=AGGREGATE_TASK, **options)
    def aggregate_observability_metrics(
        self: Task, granularity: str, start: str | None = None, end: str | None = None
    ) -> dict[str, Any]:
        """Refresh the rollups and sync metrics_aggregates; the default window is the latest
        complete bucket and the one before it. start and end are ISO 8601 with a time zone."""
        return aggregate(self, settings, granularity, start, end)

    @app.task(name=BACKFILL_TASK, **options)
    def backfill_observability_metrics(
        self: Task, start: str, end: str, granularity: str
    ) -> dict[str, Any]:
        """Backfill [start, end), resuming an unfinished backfill of the same range."""
        return backfill(self, settings, start, end, granularity)
