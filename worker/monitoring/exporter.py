from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from threading import Lock, Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

import psycopg
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.clock import CLOCK_SKEW
from worker.monitoring.health import RollupHealth, rollup_health
from worker.rollups.connections import connect
from worker.rollups.liveness import (
    LEASE_NAMES,
    HeldLease,
    RunningRuns,
    held_leases,
    running_runs,
)
from worker.schema.server_check import ServerReport, check_server

log = logging.getLogger("worker.exporter")

CONNECT_TIMEOUT_SECONDS = 5
# How long a scrape waits for the database by default; a frozen database must not freeze scrapes.
HEALTH_TIMEOUT_SECONDS = 2.0
# Server-side bound on one health query.
HEALTH_STATEMENT_TIMEOUT_SECONDS = 30

# observability_aggregation_last_success comes from the recorded runs once per process: at
# start-up, or at the first scrape that reaches the database when it was down at start-up.
_seeded = Lock()
_seeded_done = False


@dataclass(frozen=True)
class _Reading:
    health: RollupHealth
    runs: list[RunningRuns]
    leases: list[HeldLease]
    server: ServerReport


def _read(database_url: str) -> _Reading:
    with connect(
        database_url,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        statement_timeout=HEALTH_STATEMENT_TIMEOUT_SECONDS,
    ) as conn:
        reading = _Reading(
            rollup_health(conn), running_runs(conn), held_leases(conn), check_server(conn)
        )
        if not _seeded_done:
            _seed_last_successes(conn)
        return reading


def _in_thread(database_url: str) -> Future[_Reading]:
    # A daemon thread, not an executor's: a reading stuck on a frozen database must not keep
    # the process from exiting.
    future: Future[_Reading] = Future()

    def read() -> None:
        try:
            future.set_result(_read(database_url))
        except BaseException as exc:  # noqa: BLE001 - handed to the scrape waiting for it
            future.set_exception(exc)

    Thread(target=read, name="health", daemon=True).start()
    return future


class DatabaseHealthCollector(Collector):
    """Freshness of every rollup, rows dated ahead of now and the database-side policy jobs,
    read at scrape time."""

    def __init__(self, database_url: str | None, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        self.database_url = database_url
        self.timeout = timeout
        # One reading at a time, in a thread, so a scrape waits at most `timeout`; a reading
        # still stuck on a frozen database is waited for again by the next scrape, not doubled.
        self._pending: Future[_Reading] | None = None
        self._lock = Lock()

    def _reading(self) -> _Reading:
        assert self.database_url
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = _in_thread(self.database_url)
            pending = self._pending
        return pending.result(timeout=self.timeout)

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "observability_database_up",
            "1 when the health check reached the database and read the rollups within the "
            "scrape's time budget, else 0",
        )
        if not self.database_url:
            up.add_metric([], 0)
            yield up
            return
        try:
            reading = self._reading()
        except FutureTimeout:
            log.warning("health check: the database did not answer within %g s", self.timeout)
            up.add_metric([], 0)
            yield up
            return
        except psycopg.Error as exc:
            log.warning("health check could not read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        health, server = reading.health, reading.server
        up.add_metric([], 1)
        yield up
        yield from _liveness(reading)

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

        stale = GaugeMetricFamily(
            "observability_stale_buckets",
            "Closed buckets that rows were written into late and that the next scheduled run "
            "of this granularity has yet to refresh and sync into metrics_aggregates",
            labels=["granularity"],
        )
        waiting = GaugeMetricFamily(
            "observability_stale_oldest_wait_seconds",
            "How long the oldest late write noted for this granularity has waited for a "
            "scheduled run, 0 when none waits",
            labels=["granularity"],
        )
        for late in health.stale:
            stale.add_metric([late.granularity], late.buckets)
            waiting.add_metric([late.granularity], late.waiting(health.checked_at).total_seconds())
        yield stale
        yield waiting
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


def _liveness(reading: _Reading) -> Iterable[Metric]:
    running = GaugeMetricFamily(
        "observability_aggregation_running_runs",
        "Aggregation runs marked running in observability.aggregation_runs",
        labels=["granularity"],
    )
    stuck = GaugeMetricFamily(
        "observability_aggregation_stuck_runs",
        "Runs marked running whose granularity no live lease covers: their worker is gone and "
        "no run has come since to mark them abandoned and resume their range",
        labels=["granularity"],
    )
    oldest = GaugeMetricFamily(
        "observability_aggregation_oldest_running_run_seconds",
        "Age of the oldest run marked running (absent when none is)",
        labels=["granularity"],
    )
    for runs in reading.runs:
        running.add_metric([runs.granularity], runs.running)
        stuck.add_metric([runs.granularity], runs.stuck)
        if runs.oldest_seconds is not None:
            oldest.add_metric([runs.granularity], runs.oldest_seconds)
    held = GaugeMetricFamily(
        "observability_worker_lease_held",
        "1 while a run holds the lease (unexpired), else 0",
        labels=["lease"],
    )
    held_for = GaugeMetricFamily(
        "observability_worker_lease_held_seconds",
        "How long the current holder has held the lease (absent when free)",
        labels=["lease"],
    )
    leases = {lease.name: lease for lease in reading.leases}
    for name in sorted({*LEASE_NAMES, *leases}):
        lease = leases.get(name)
        held.add_metric([name], 1 if lease else 0)
        if lease is not None:
            held_for.add_metric([name], lease.held_seconds)
    yield from (running, stuck, oldest, held, held_for)


def _skew() -> str:
    return f"{int(CLOCK_SKEW.total_seconds() // 60)} minutes"


class _ProcessLocal(Collector):
    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()


def build_registry(
    database_url: str | None, health_timeout: float = HEALTH_TIMEOUT_SECONDS
) -> CollectorRegistry:
    """The task metrics (merged across prefork children when PROMETHEUS_MULTIPROC_DIR is set)
    plus the database health read at scrape time."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ProcessLocal())
    registry.register(DatabaseHealthCollector(database_url, health_timeout))
    return registry


def serve_metrics(
    port: int,
    database_url: str | None,
    addr: str = "0.0.0.0",
    health_timeout: float = HEALTH_TIMEOUT_SECONDS,
) -> tuple[WSGIServer, Thread]:
    registry = build_registry(database_url, health_timeout)
    server, thread = start_http_server(port, addr, registry=registry)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, server.server_port)
    return server, thread


def restore_last_successes(database_url: str | None) -> None:
    """Seed observability_aggregation_last_success from the recorded runs."""
    if not database_url:
        return
    try:
        with connect(database_url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            _seed_last_successes(conn)
    except psycopg.Error as exc:
        log.warning(
            "could not read the last successful runs (read again at the first scrape that "
            "reaches the database): %s",
            exc,
        )


def _seed_last_successes(conn: psycopg.Connection[Any]) -> None:
    global _seeded_done
    from worker.rollups.metrics import restore_last_success
    from worker.rollups.runs import last_successes

    with _seeded:
        if _seeded_done:
            return
        for granularity, at in last_successes(conn).items():
            restore_last_success(granularity, at.timestamp())
        _seeded_done = True
