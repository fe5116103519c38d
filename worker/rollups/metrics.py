from __future__ import annotations

import os
import time

from prometheus_client import Counter, Gauge, Histogram

from worker.models import GRANULARITIES

# Labels stay bounded: granularity (3 values) and outcome (success, failure, busy, stopped: by the
# task's time limit, to resume). Never ids.
# Under a prefork Celery worker they live in PROMETHEUS_MULTIPROC_DIR (monitoring/exporter.py).
AGGREGATION_DURATION = Histogram(
    "observability_aggregation_duration_seconds",
    "Wall time of one aggregation run (refresh of the rollups plus sync into metrics_aggregates)",
    ["granularity", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
RECORDS_PROCESSED = Counter(
    "observability_aggregation_records_processed",
    "metrics_aggregates rows created, updated or deleted by aggregation runs, counted as each "
    "batch is committed",
    ["granularity"],
)
LAST_SUCCESS = Gauge(
    "observability_aggregation_last_success",
    "Unix time at which the last aggregation run of this granularity succeeded",
    ["granularity"],
    multiprocess_mode="max",
)

TASK_FAILURES = Counter(
    "observability_aggregation_task_failures",
    "Aggregation tasks that failed for good (retries exhausted or a bad argument)",
    ["granularity"],
)

BAD_REQUESTS = Counter(
    "observability_aggregation_bad_requests",
    "Aggregation tasks refused for their arguments (unknown granularity, a window that is "
    "malformed, in the future or past the retention horizon); no retry can fix them",
    ["reason"],
)
BAD_REQUEST_REASONS = ("unknown_granularity", "invalid_window", "future_window", "past_retention")

OUTCOMES = ("success", "failure", "busy", "stopped")


def initialise_series() -> None:
    """Create every series at 0, so the first failure is an increase that rate() and increase()
    can see, not a series appearing at 1. In multiprocess mode this writes files into
    PROMETHEUS_MULTIPROC_DIR, so the worker calls it once it has prepared that directory."""
    for granularity in GRANULARITIES:
        for outcome in OUTCOMES:
            AGGREGATION_DURATION.labels(granularity, outcome)
        RECORDS_PROCESSED.labels(granularity)
        TASK_FAILURES.labels(granularity)
    for reason in BAD_REQUEST_REASONS:
        BAD_REQUESTS.labels(reason)


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    initialise_series()


def observe_run(
    granularity: str, outcome: str, seconds: float, records: int, *, scheduled: bool
) -> None:
    """Record one run. Only scheduled runs move last_success: a backfill of an old range says
    nothing about whether the schedule keeps metrics_aggregates current."""
    AGGREGATION_DURATION.labels(granularity, outcome).observe(seconds)
    if records:
        RECORDS_PROCESSED.labels(granularity).inc(records)
    if outcome == "success" and scheduled:
        LAST_SUCCESS.labels(granularity).set(time.time())


def records_committed(granularity: str, records: int) -> None:
    if records:
        RECORDS_PROCESSED.labels(granularity).inc(records)


def bad_request(reason: str) -> None:
    BAD_REQUESTS.labels(reason).inc()


def task_failed(granularity: str) -> None:
    TASK_FAILURES.labels(granularity).inc()


def restore_last_success(granularity: str, unix_time: float) -> None:
    """Seed the gauge from the database at start-up, so a restart doesn't look like an outage."""
    LAST_SUCCESS.labels(granularity).set(unix_time)
