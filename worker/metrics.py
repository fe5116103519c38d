from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

# Labels stay bounded: granularity (3 values) and outcome (success, failure, busy). Never ids.
# Under a prefork Celery worker they live in PROMETHEUS_MULTIPROC_DIR (worker/metrics_server.py).
AGGREGATION_DURATION = Histogram(
    "observability_aggregation_duration_seconds",
    "Wall time of one aggregation run (refresh of the rollups plus sync into metrics_aggregates)",
    ["granularity", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
RECORDS_PROCESSED = Counter(
    "observability_aggregation_records_processed",
    "metrics_aggregates rows created, updated or deleted by aggregation runs",
    ["granularity"],
)
LAST_SUCCESS = Gauge(
    "observability_aggregation_last_success",
    "Unix time at which the last aggregation run of this granularity succeeded",
    ["granularity"],
    multiprocess_mode="max",
)

OUTCOMES = ("success", "failure", "busy")


def observe_run(granularity: str, outcome: str, seconds: float, records: int) -> None:
    AGGREGATION_DURATION.labels(granularity, outcome).observe(seconds)
    if records:
        RECORDS_PROCESSED.labels(granularity).inc(records)
    if outcome == "success":
        LAST_SUCCESS.labels(granularity).set(time.time())


def restore_last_success(granularity: str, unix_time: float) -> None:
    """Seed the gauge from the database at start-up, so a restart doesn't look like an outage."""
    LAST_SUCCESS.labels(granularity).set(unix_time)
