from __future__ import annotations

import atexit
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab

from worker.scheduling.tasks import AGGREGATE_TASK, register_tasks
from worker.settings import WorkerSettings

log = logging.getLogger("worker.celery")

settings = WorkerSettings.from_env()


# The database's own policies keep the rollups fresh; these runs force a refresh of the latest
# complete buckets and copy them into metrics_aggregates. Exactly one beat process may run.
BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "aggregate-hourly-metrics": {
        "task": AGGREGATE_TASK,
        "schedule": crontab(minute=5),
        "args": ("hour",),
    },
    "aggregate-daily-metrics": {
        "task": AGGREGATE_TASK,
        "schedule": crontab(minute=0, hour=1),
        "args": ("day",),
    },
    "aggregate-weekly-metrics": {
        "task": AGGREGATE_TASK,
        "schedule": crontab(minute=0, hour=2, day_of_week="mon"),
        "args": ("week",),
    },
}

# Redis hands an unacknowledged task (its worker died) to another worker once it is older than
# the visibility timeout, found by a periodic sweep (kombu: every interval x throttle seconds,
# 100 s by default). A short timeout gets a sweep to match, so recovery is not dominated by it.
_TRANSPORT_OPTIONS = {
    "visibility_timeout": settings.visibility_timeout,
    "unacked_restore_interval": min(10, max(1, settings.visibility_timeout // 10)),
    "unacked_restore_throttle": 10 if settings.visibility_timeout >= 1000 else 1,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
}

app = Celery("worker")
app.conf.update(
    broker_url=settings.broker_url,
    result_backend=settings.result_backend,
    broker_connection_retry_on_startup=True,
    # Reconnect to a lost broker for as long as it takes (the default gives up after 100
    # attempts, and the worker then exits).
    broker_connection_max_retries=None,
    # A task running when the broker goes away finishes its work; its acknowledgement may be
    # lost with the connection, and then Redis hands the task out again after the visibility
    # timeout. The new delivery returns the stored result (tasks.py: _already_done) or resumes.
    # Cancelling on connection loss would throw away the work done during a short outage.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    broker_transport_options=_TRANSPORT_OPTIONS,
    result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
    # A result written while Redis is down waits for it instead of failing the finished task.
    result_backend_always_retry=True,
    result_backend_max_retries=60,
    redis_socket_connect_timeout=5,
    redis_socket_keepalive=True,
    result_expires=86400,
    timezone="UTC",
    enable_utc=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=True,
    # A task whose worker died mid-run goes back to the queue instead of being lost; the tasks
    # are idempotent, so running one again is safe.
    task_reject_on_worker_lost=True,
    task_time_limit=settings.time_limit,
    task_soft_time_limit=settings.soft_time_limit,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    beat_schedule=BEAT_SCHEDULE,
)


@signals.worker_init.connect
def _start_metrics_server(**_: Any) -> None:
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc_dir:
        # Files left by an earlier worker would be merged into this one's numbers.
        shutil.rmtree(multiproc_dir, ignore_errors=True)
        Path(multiproc_dir).mkdir(parents=True, exist_ok=True)
        from worker.rollups.metrics import initialise_series

        initialise_series()
    if settings.metrics_port <= 0:
        return
    from worker.monitoring.exporter import restore_last_successes, serve_metrics

    restore_last_successes(settings.database_url)
    serve_metrics(
        settings.metrics_port, settings.database_url, health_timeout=settings.health_timeout
    )


@signals.beat_init.connect
def _only_one_beat(sender: Any = None, **_: Any) -> None:
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        log.warning("not a Redis broker: nothing stops a second beat from running")
        return
    from worker.scheduling.beat_lock import BeatAlreadyRunning, BeatLock

    lock = BeatLock(settings.broker_url, settings.beat_lock_ttl)
    try:
        lock.acquire()
    except BeatAlreadyRunning as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None  # not an Exception, so the signal does not swallow it
    atexit.register(lock.release)


@signals.worker_process_shutdown.connect
def _forget_dead_child(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


# The tasks are registered wherever the app is imported (producers, beat, tests), not only in
# worker processes.
register_tasks(app, settings)
