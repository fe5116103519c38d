from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from threading import Thread
from wsgiref.simple_server import WSGIServer

import psycopg
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.clock import CLOCK_SKEW
from worker.monitoring.health import rollup_health
from worker.schema.server_check import ServerReport, check_server

log = logging.getLogger("worker.rollups.metrics")

CONNECT_TIMEOUT_SECONDS = 5


class DatabaseHealthCollector(Collector):
    """Freshness of every rollup, rows dated ahead of now and the database-side policy jobs,
    read at scrape time."""

    def __init__(self, database_url: str | None) -> None:
        self.database_url = database_url

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "observability_database_up",
            "1 when the health check reached the database and read the rollups, else 0",
        )
        if not self.database_url:
            up.add_metric([], 0)
            yield up
            return
        try:
            with psycopg.connect(
                self.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
            ) as conn:
                health = rollup_health(conn)
                server = check_server(conn)
        except psycopg.Error as exc:
            log.warning("health check could not read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        lag = GaugeMetricFamily(
            "observability_rollup_lag_seconds",
            "Seconds between now and the end of the rollup's materialized data (its watermark), "
            "0 when that is at or past now",
            labels=["rollup"],
        )
        newest = GaugeMetricFamily(
            "observability_rollup_newest_bucket_timestamp_seconds",
            "Unix time of the start of the newest materialized bucket, leaving out buckets "
            "dated ahead of now",
            labels=["rollup"],
        )
        future_buckets = GaugeMetricFamily(
            "observability_rollup_future_buckets",
            f"Materialized buckets starting more than {_skew()} after now (rows dated in the "
            "future were refreshed); lag and newest bucket leave them out",
            labels=["rollup"],
        )
        behind = GaugeMetricFamily(
            "observability_rollup_unmaterialized_seconds",
            "How much of the newest raw data the rollup has not materialized yet: newest raw "
            "row (rows dated ahead of now left out) minus watermark, 0 when caught up, +Inf "
            "when nothing is materialized",
            labels=["rollup"],
        )
        future_rows = GaugeMetricFamily(
            "observability_raw_future_rows",
            f"Raw rows dated more than {_skew()} after now; freshness leaves them out",
            labels=["table"],
        )
        for rollup in health.rollups:
            if rollup.lag is not None:
                lag.add_metric([rollup.name], rollup.lag.total_seconds())
            if rollup.newest_bucket is not None:
                newest.add_metric([rollup.name], rollup.newest_bucket.timestamp())
            future_buckets.add_metric([rollup.name], rollup.future_buckets)
            source = rollup.name.removeprefix("observability.").rpartition("_")[0]
            raw = health.newest_raw.get(source)
            if raw is not None:
                if rollup.watermark is None:
                    behind.add_metric([rollup.name], math.inf)
                else:
                    behind.add_metric(
                        [rollup.name], max(0.0, (raw - rollup.watermark).total_seconds())
                    )
        for table in health.raw:
            future_rows.add_metric([table.table], table.future_rows)
        yield lag
        yield newest
        yield behind
        yield future_buckets
        yield future_rows

        failures = GaugeMetricFamily(
            "observability_job_failures",
            "Failed runs of a database-side policy job (refresh, compression, retention)",
            labels=["job_kind", "target"],
        )
        last_ok = GaugeMetricFamily(
            "observability_job_last_run_success",
            "1 when the job's last run succeeded, 0 when it failed (absent before any run)",
            labels=["job_kind", "target"],
        )
        never = GaugeMetricFamily(
            "observability_job_never_succeeded",
            "1 when the job has failed and has no successful run, 0 when it has succeeded "
            "(absent before any run)",
            labels=["job_kind", "target"],
        )
        for job in health.jobs:
            failures.add_metric([job.kind, job.target], job.total_failures)
            if job.last_run_status is not None:
                last_ok.add_metric([job.kind, job.target], job.last_run_status == "Success")
            # not tied to the last run's status, which a server leaves empty while the job runs
            if job.total_runs:
                never.add_metric([job.kind, job.target], job.never_succeeded)
        yield failures
        yield last_ok
        yield never
        yield from _server_metrics(server)


def _server_metrics(server: ServerReport) -> Iterable[Metric]:
    runs = server.facts.runs
    all_failing = GaugeMetricFamily(
        "observability_database_jobs_all_failing",
        "1 when at least one of the project's database-side jobs has run and the latest run "
        "of every one that ran failed (the server's jobs are broken as a whole), else 0",
    )
    all_failing.add_metric([], runs.all_failing)
    yield all_failing
    failing = GaugeMetricFamily(
        "observability_database_jobs_failing",
        "The project's database-side jobs whose latest run failed",
    )
    failing.add_metric([], runs.failing)
    yield failing
    problems = GaugeMetricFamily(
        "observability_server_check_findings",
        "Findings of the server check (python -m worker status prints them) by level",
        labels=["level"],
    )
    for level in ("error", "warning"):
        problems.add_metric([level], sum(f.level == level for f in server.findings))
    yield problems


def _skew() -> str:
    return f"{int(CLOCK_SKEW.total_seconds() // 60)} minutes"


class _ProcessLocal(Collector):
    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()


def build_registry(database_url: str | None) -> CollectorRegistry:
    """The task metrics (merged across prefork children when PROMETHEUS_MULTIPROC_DIR is set)
    plus the database health read at scrape time."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ProcessLocal())
    registry.register(DatabaseHealthCollector(database_url))
    return registry


def serve_metrics(
    port: int, database_url: str | None, addr: str = "0.0.0.0"
) -> tuple[WSGIServer, Thread]:
    server, thread = start_http_server(port, addr, registry=build_registry(database_url))
    log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, server.server_port)
    return server, thread


def restore_last_successes(database_url: str | None) -> None:
    """Seed observability_aggregation_last_success from the recorded runs."""
    if not database_url:
        return
    from worker.rollups.metrics import restore_last_success
    from worker.rollups.runs import last_successes

    try:
        with psycopg.connect(
            database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as conn:
            for granularity, at in last_successes(conn).items():
                restore_last_success(granularity, at.timestamp())
    except psycopg.Error as exc:
        log.warning("could not read the last successful runs: %s", exc)
