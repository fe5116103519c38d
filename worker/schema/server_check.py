from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

# The oldest TimescaleDB the project is tested on: the embedded engine (2.23.0-dev) and a
# source build of 2.23.1. Older releases may lack what sql/ relies on (hierarchical continuous
# aggregates with policies, job_errors, materialized-only defaults); they are refused, not
# guessed at.
MINIMUM_TIMESCALEDB = (2, 23, 0)
# Continuous aggregates, compression and policies are the Timescale-licensed part.
REQUIRED_LICENSE = "timescale"
# TimescaleDB's own rule of thumb: the server's worker processes must hold TimescaleDB's
# background workers, PostgreSQL's parallel workers and the launcher.
LAUNCHER = 1
# The jobs a migrated database has: 9 refresh policies (3 sources x hour, day, week),
# 4 compression and 4 retention policies on the raw hypertables (traces, spans, span_events,
# document_events), and prune_trace_extents.
# tests/migration checks this against a migrated database.
PROJECT_JOBS = 18

Level = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class JobRuns:
    jobs: int  # scheduled jobs of the project in this database
    ran: int  # of them, jobs with at least one recorded run
    failing: int  # of them, jobs whose latest run failed
    latest_error: str | None = None

    @property
    def all_failing(self) -> bool:
        """At least one job has run and every job that has run failed its latest run."""
        return self.ran > 0 and self.failing == self.ran


@dataclass(frozen=True)
class ServerFacts:
    postgres_version: str
    timescaledb_version: str | None  # installed here, else the server's default; None: absent
    timescaledb_installed: bool
    license: str | None  # None: unknown (the extension is not loaded)
    max_background_workers: int | None  # None: the setting does not exist (embedded engine)
    max_worker_processes: int
    max_parallel_workers: int
    launcher_running: bool  # a TimescaleDB background-worker launcher is running
    schedulers: int  # databases with a running TimescaleDB scheduler
    all_jobs: int  # scheduled jobs in this database, the project's and TimescaleDB's own
    runs: JobRuns = field(default_factory=lambda: JobRuns(0, 0, 0))


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str
    # False for what a migration neither needs nor fixes (failing jobs, worker budget)
    blocks_install: bool = False


@dataclass(frozen=True)
class ServerReport:
    facts: ServerFacts
    findings: list[Finding]

    @property
    def refused(self) -> bool:
        return any(f.level == "error" for f in self.findings)

    @property
    def jobs_all_failing(self) -> bool:
        return self.facts.runs.all_failing

    def _worst(self) -> Finding | None:
        for level in ("error", "warning"):
            for finding in self.findings:
                if finding.level == level:
                    return finding
        return None

    def headline(self) -> str:
        """One line: the worst finding, else what the server is."""
        worst = self._worst()
        if worst is not None:
            return f"SERVER {worst.level.upper()}: {worst.message}"
        f = self.facts
        return (
            f"server: TimescaleDB {f.timescaledb_version} ({f.license or 'license unknown'}), "
            f"PostgreSQL {f.postgres_version}"
        )

    def lines(self) -> list[str]:
        """The headline, then every other finding."""
        worst = self._worst()
        rest = [f"{f.level}: {f.message}" for f in self.findings if f != worst]
        return [self.headline(), *rest]


class UnsupportedServer(RuntimeError):
    """The server cannot hold the project's schema; the message says why."""


def parse_version(text: str) -> tuple[int, int, int]:
    """'2.23.1', '2.23.0-dev' -> (2, 23, 1), (2, 23, 0)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ValueError(f"not a TimescaleDB version: {text!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _version(parts: tuple[int, ...]) -> str:
    return ".".join(map(str, parts))


_EXTENSION = """
select e.extversion, a.default_version
from (select) as one
left join pg_catalog.pg_extension as e on e.extname = 'timescaledb'
left join pg_catalog.pg_available_extensions as a on a.name = 'timescaledb'
"""
_SETTINGS = """
select pg_catalog.current_setting('server_version'),
  pg_catalog.current_setting('timescaledb.license', true),
  pg_catalog.current_setting('timescaledb.max_background_workers', true),
  pg_catalog.current_setting('max_worker_processes')::int,
  pg_catalog.current_setting('max_parallel_workers')::int
"""
_WORKERS = """
select
  pg_catalog.count(*) filter (where backend_type = 'TimescaleDB Background Worker Launcher'),
  pg_catalog.count(distinct datname)
    filter (where backend_type = 'TimescaleDB Background Worker Scheduler')
from pg_catalog.pg_stat_activity
"""
# The project's jobs: policies on its tables and its own procedures. TimescaleDB's own jobs
# (telemetry, job history retention) count towards the worker budget only.
_RUNS = """
select pg_catalog.count(*),
  pg_catalog.count(*) filter (where coalesce(s.total_runs, 0) > 0),
  pg_catalog.count(*) filter (where s.last_run_status = 'Failed'),
  (select e.err_message from timescaledb_information.job_errors as e
    join timescaledb_information.jobs as k on k.job_id = e.job_id
    where k.hypertable_schema = %(schema)s or k.proc_schema = %(schema)s
    order by e.finish_time desc limit 1),
  (select pg_catalog.count(*) from timescaledb_information.jobs where scheduled)
from timescaledb_information.jobs as j
left join timescaledb_information.job_stats as s on s.job_id = j.job_id
where j.scheduled and (j.hypertable_schema = %(schema)s or j.proc_schema = %(schema)s)
"""


def read_facts(conn: psycopg.Connection[Any], schema: str = "observability") -> ServerFacts:
    """What the server says about itself; conn must be in autocommit mode.

    Where TimescaleDB is available but not yet installed in this database, its license is read
    by creating the extension inside a transaction that is rolled back.
    """
    row = conn.execute(_EXTENSION).fetchone()
    installed, available = row if row else (None, None)
    postgres, license_, bgw, processes, parallel = _one(conn, _SETTINGS)
    if installed is None and available is not None:
        license_ = _trial_license(conn) or license_
    launchers, schedulers = _one(conn, _WORKERS)
    runs, all_jobs = JobRuns(0, 0, 0), 0
    if installed is not None:
        jobs, ran, failing, error, all_jobs = _one(conn, _RUNS, {"schema": schema})
        runs = JobRuns(int(jobs), int(ran), int(failing), error)
    return ServerFacts(
        postgres_version=str(postgres),
        timescaledb_version=installed or available,
        timescaledb_installed=installed is not None,
        license=license_,
        max_background_workers=int(bgw) if bgw not in (None, "") else None,
        max_worker_processes=int(processes),
        max_parallel_workers=int(parallel),
        launcher_running=bool(launchers),
        schedulers=int(schedulers),
        all_jobs=int(all_jobs),
        runs=runs,
    )


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


def _trial_license(conn: psycopg.Connection[Any]) -> str | None:
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("create extension if not exists timescaledb with schema public")
            row = conn.execute(
                "select pg_catalog.current_setting('timescaledb.license', true)"
            ).fetchone()
            return row[0] if row else None
    except psycopg.Error:
        # No privilege, or the library cannot load: the migration itself will say so.
        return None


def evaluate(facts: ServerFacts, project_jobs: int | None = None) -> list[Finding]:
    """Judge the facts. project_jobs: the jobs a migrated database has (default PROJECT_JOBS)."""
    findings: list[Finding] = []
    required = _version(MINIMUM_TIMESCALEDB)
    if facts.timescaledb_version is None:
        findings.append(
            Finding(
                "error",
                "TimescaleDB is not available on this server; the project needs TimescaleDB "
                f">= {required} (for example the timescale/timescaledb-ha image)",
                blocks_install=True,
            )
        )
        return findings
    found = parse_version(facts.timescaledb_version)
    where = "installed" if facts.timescaledb_installed else "available"
    if found < MINIMUM_TIMESCALEDB:
        findings.append(
            Finding(
                "error",
                f"TimescaleDB {facts.timescaledb_version} is {where} on this server; the project "
                f"needs TimescaleDB >= {required}: upgrade the extension (ALTER EXTENSION "
                "timescaledb UPDATE after installing a newer build) or use a newer image",
                blocks_install=True,
            )
        )
    if facts.license is not None and facts.license != REQUIRED_LICENSE:
        findings.append(
            Finding(
                "error",
                f"timescaledb.license is '{facts.license}'; continuous aggregates, compression "
                f"and policies need '{REQUIRED_LICENSE}' (the Community Edition): set "
                f"timescaledb.license = '{REQUIRED_LICENSE}' or use a build that has it",
                blocks_install=True,
            )
        )
    findings += _workers(facts, project_jobs)
    runs = facts.runs
    if runs.all_failing:
        error = f"; latest error: {runs.latest_error}" if runs.latest_error else ""
        findings.insert(
            0,
            Finding(
                "error" if facts.timescaledb_installed else "warning",
                f"every database-side job is failing: the latest run of all {runs.ran} jobs "
                f"that ran failed, so rollups, compression and retention are not kept up{error}",
            ),
        )
    return findings


def _workers(facts: ServerFacts, project_jobs: int | None) -> list[Finding]:
    if not facts.launcher_running:
        return [
            Finding(
                "note" if facts.max_background_workers is None else "warning",
                "no TimescaleDB background workers run on this server (the embedded engine has "
                "none; elsewhere check shared_preload_libraries and "
                "timescaledb.max_background_workers): refresh, compression and retention "
                "policies never run by themselves; the aggregation worker's backfills still "
                "refresh the rollups",
            )
        ]
    budget = facts.max_background_workers or 0
    if budget == 0:
        return [Finding("warning", "timescaledb.max_background_workers is 0: no job runs")]
    jobs = max(PROJECT_JOBS if project_jobs is None else project_jobs, facts.all_jobs)
    # One scheduler per database with TimescaleDB, this one included, plus every job here
    # at once (all of them fall due together after an install or an outage).
    schedulers = max(facts.schedulers, 1)
    needed = jobs + schedulers
    findings = []
    if budget < needed:
        findings.append(
            Finding(
                "warning",
                f"timescaledb.max_background_workers is {budget}: {jobs} jobs in this database "
                f"plus {schedulers} schedulers (one per database with TimescaleDB) need "
                f"{needed} to run at once; jobs will wait for a worker ('out of background "
                "workers' in the server log). Raise it (docker-compose.yml shows a sizing)",
            )
        )
    floor = budget + facts.max_parallel_workers + LAUNCHER
    if facts.max_worker_processes < floor:
        findings.append(
            Finding(
                "warning",
                f"max_worker_processes is {facts.max_worker_processes}, below "
                f"timescaledb.max_background_workers ({budget}) + max_parallel_workers "
                f"({facts.max_parallel_workers}) + 1 = {floor}: background jobs and parallel "
                "queries compete for worker slots",
            )
        )
    return findings


def check_server(conn: psycopg.Connection[Any], project_jobs: int | None = None) -> ServerReport:
    facts = read_facts(conn)
    return ServerReport(facts, evaluate(facts, project_jobs))


def ensure_supported(url: str) -> ServerReport:
    """Check a server before migrating it; raises UnsupportedServer with the reasons."""
    with psycopg.connect(url, autocommit=True) as conn:
        report = check_server(conn)
    blocking = [f.message for f in report.findings if f.level == "error" and f.blocks_install]
    if blocking:
        raise UnsupportedServer("the server cannot hold the schema: " + "; ".join(blocking))
    return report
