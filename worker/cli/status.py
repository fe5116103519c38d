from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from worker.cli.common import add_database_url, database_url
from worker.clock import CLOCK_SKEW
from worker.formatting import format_duration, format_table, format_time

if TYPE_CHECKING:
    from worker.cli.common import SubParsers
    from worker.monitoring.health import JobStatus, RollupHealth
    from worker.rollups.liveness import HeldLease, RunningRuns
    from worker.rollups.runs import GranularityStatus

log = logging.getLogger("worker.status")

_SKETCHES = {
    "timescaledb_toolkit": "timescaledb_toolkit (UddSketch)",
    "observability": "the project's own (timescaledb_toolkit is not installed)",
}


def register(subparsers: SubParsers) -> None:
    status = subparsers.add_parser(
        "status",
        help="show the rollups and the worker: sketch, freshness, policy jobs, last success",
        description="Print which percentile sketch the rollups use, each continuous aggregate "
        "with its newest materialized bucket and lag, and the database's job statistics for "
        "the refresh, compression and retention policies, then the aggregation worker's last "
        "success and latest run per granularity. Rows and buckets dated ahead of the clock "
        "are named apart: freshness leaves them out. Closed buckets that rows were written "
        "into late are counted per granularity until a scheduled run has synced them.",
    )
    add_database_url(status)
    status.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    url = database_url(args, log)
    if not url:
        return 2
    from worker.monitoring.health import rollup_health
    from worker.rollups.liveness import held_leases, running_runs
    from worker.rollups.runs import granularity_statuses
    from worker.schema.server_check import check_server

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            # First, so that a server whose jobs all fail says so even without the schema.
            server = check_server(conn)
            print("\n".join(server.lines()), flush=True)
            health = rollup_health(conn)
            runs = granularity_statuses(conn)
            running = running_runs(conn)
            leases = held_leases(conn)
    except psycopg.OperationalError as exc:
        log.error("cannot reach the database: %s", exc)
        return 1
    except psycopg.errors.UndefinedTable as exc:
        log.error("the observability schema is not installed (python -m worker migrate): %s", exc)
        return 1
    lines = ["", *render(health), "", *render_runs(runs), *render_liveness(running, leases)]
    print("\n".join(lines))
    return 0


def render_runs(runs: Sequence[GranularityStatus]) -> list[str]:
    lines = ["aggregation worker (metrics_aggregates)"]
    lines += format_table(
        ["granularity", "last success", "latest run", "status", "started", "synced up to"],
        [
            [
                r.granularity,
                format_time(r.last_success) if r.last_success else "never",
                r.last_run_kind or "-",
                r.last_run_status or "-",
                format_time(r.last_run_started_at),
                format_time(r.done_until),
            ]
            for r in runs
        ],
    )
    for run in runs:
        if run.last_run_status == "failed" and run.last_error:
            lines.append(f"last {run.granularity} run failed with: {run.last_error}")
        elif run.last_run_status == "interrupted" and run.last_error:
            lines.append(f"last {run.granularity} run was {run.last_error}")
    return lines


def render_liveness(running: Sequence[RunningRuns], leases: Sequence[HeldLease]) -> list[str]:
    lines = []
    for runs in running:
        if runs.stuck:
            lines.append(
                f"{_plural(runs.stuck, runs.granularity + ' run')} marked running with no worker "
                "holding its lease: abandoned, to be resumed by the next run of "
                f"{runs.granularity}"
            )
        elif runs.running and runs.oldest_seconds is not None:
            age = format_duration(timedelta(seconds=runs.oldest_seconds))
            lines.append(f"{runs.granularity} run under way for {age}")
    if leases:
        lines += ["", "leases held"]
        lines += format_table(
            ["lease", "holder", "task", "held for", "expires"],
            [
                [
                    lease.name,
                    lease.holder,
                    lease.task_id or "-",
                    format_duration(timedelta(seconds=lease.held_seconds)),
                    format_time(lease.expires_at),
                ]
                for lease in leases
            ],
        )
    else:
        lines.append("leases held: none")
    return lines


def render(health: RollupHealth) -> list[str]:
    lines = [f"checked at {format_time(health.checked_at)}"]
    if health.sketch is None:
        lines.append("percentile sketch: not chosen yet (run python -m worker migrate)")
    else:
        name = _SKETCHES.get(health.sketch.implementation, health.sketch.implementation)
        lines.append(f"percentile sketch: {name}, functions in {health.sketch.function_schema}")
    lines.append("")
    lines.append("rollups")
    lines += format_table(
        ["rollup", "bucket", "real-time", "newest bucket", "lag"],
        [
            [
                r.name,
                r.bucket_width,
                "yes" if r.real_time else "no",
                format_time(r.newest_bucket),
                format_duration(r.lag) if r.lag is not None else "not materialized",
            ]
            for r in health.rollups
        ],
    )
    lines += _future(health)
    lines += _stale(health)
    lines.append("")
    lines.append("jobs")
    lines += format_table(
        [
            "id",
            "kind",
            "target",
            "settings",
            "every",
            "last run",
            "status",
            "last success",
            "next start",
            "runs",
            "failed",
        ],
        [
            [
                str(j.job_id),
                j.kind,
                j.target,
                _settings(j),
                format_duration(j.schedule_interval),
                format_time(j.last_run_started_at),
                j.last_run_status or "never ran",
                _last_success(j),
                format_time(j.next_start) if j.scheduled else "paused",
                str(j.total_runs),
                str(j.total_failures),
            ]
            for j in health.jobs
        ],
    )
    for job in health.jobs:
        if job.never_succeeded:
            runs = _plural(job.total_failures, "failed run")
            lines.append(
                f"job {job.job_id} ({job.kind} of {job.target}) has never succeeded: {runs}"
            )
    errors = [j for j in health.jobs if j.last_error and j.last_run_status == "Failed"]
    for job in errors:
        lines.append(f"job {job.job_id} last failed with: {job.last_error}")
    return lines


def _future(health: RollupHealth) -> list[str]:
    ahead = f"dated more than {format_duration(CLOCK_SKEW)} ahead of now"
    lines = []
    for rollup in health.rollups:
        if rollup.future_buckets:
            buckets = _plural(rollup.future_buckets, "materialized bucket")
            latest = _time_or_infinity(rollup.newest_future_bucket)
            lines.append(
                f"{rollup.name} has {buckets} {ahead} (the latest at {latest}): newest bucket "
                "and lag leave them out"
            )
    for table in health.raw:
        if table.future_rows:
            rows = _plural(table.future_rows, "row")
            latest = _time_or_infinity(table.newest_future)
            lines.append(
                f"{table.table} has {rows} {ahead} (the latest at {latest}): freshness leaves "
                "them out until their time comes; check the clock of whatever wrote them"
            )
    return lines


def _stale(health: RollupHealth) -> list[str]:
    """Closed buckets written into late: their metrics_aggregates rows are stale until the next
    scheduled run of the granularity."""
    if not health.stale:
        return []
    lines = ["", "late rows waiting for a scheduled run (metrics_aggregates stale there)"]
    lines += format_table(
        ["granularity", "buckets", "oldest bucket", "waiting for"],
        [
            [
                s.granularity,
                str(s.buckets),
                format_time(s.oldest_bucket),
                format_duration(s.waiting(health.checked_at)) if s.buckets else "-",
            ]
            for s in health.stale
        ],
    )
    return lines


def _last_success(job: JobStatus) -> str:
    if job.last_successful_finish is not None:
        return format_time(job.last_successful_finish)
    return "never succeeded" if job.never_succeeded else "-"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _time_or_infinity(value: datetime | None) -> str:
    # counted rows or buckets without a finite latest time are dated 'infinity'
    return format_time(value) if value is not None else "infinity"


def _settings(job: JobStatus) -> str:
    config: dict[str, Any] = job.config
    if job.kind == "refresh":
        start, end = config.get("start_offset"), config.get("end_offset")
        return f"window {start} .. {end} ago"
    if job.kind == "compression":
        return f"after {config.get('compress_after')}"
    if job.kind == "retention":
        return f"drop after {config.get('drop_after')}"
    return ""
