from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

from tests.celery_support import CeleryWorker, celery_client, sample, start_worker
from tests.integration.test_oracle import no_rollups_left, otlp_endpoint  # noqa: F401
from tests.oracle import run as oracle_run
from tests.oracle.model import Traffic
from tests.oracle.observed import connect
from tests.oracle.rollup import GRANULARITIES, WIDTHS, bucket
from tests.oracle.run import CaseResult, run_case
from tests.processes import children, database_server_processes, stopped
from tests.redis_server import RedisServer
from tests.rollup_support import rows_as_dicts, wait_for
from worker.scheduling.tasks import AGGREGATE_TASK, BACKFILL_TASK

# Each fault of an operator's bad day, done to a real Celery worker on a private Redis while it
# syncs the oracle's traffic: the worker must heal by itself (redelivery, retry, resume, the
# next scheduled run; no manual command), and the oracle then compares metrics_aggregates and
# every rollup with what was sent. The fault hits the hourly backfill of phase 1, once some of
# its batches are committed; phase 2 (late rows, updates, compressed chunks) then goes through
# the healed worker.

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

SEED = 20261205
TRACES = 120
DOCUMENTS = 60
UNRESPONSIVE = 6
# Short enough that a lost task comes back within the test: the deployed defaults are 300 s of
# visibility timeout and a 60 s lease (docs/worker.md), the same mechanisms at five times this.
FAST = {
    "OBSERVABILITY_VISIBILITY_TIMEOUT": "30",
    "OBSERVABILITY_TASK_TIME_LIMIT": "25",
    "OBSERVABILITY_LEASE_TTL": "6",
    "OBSERVABILITY_RETRY_BACKOFF_MAX": "2",
    "OBSERVABILITY_TASK_MAX_RETRIES": "30",
    "OBSERVABILITY_BATCH_BUCKETS": "24",
    "OBSERVABILITY_DB_UNRESPONSIVE_TIMEOUT": str(UNRESPONSIVE),
}
# A fault is healed once the hourly backfill's result (or the run that heals it) is in.
RECOVERY_BUDGET = 180


@dataclass
class Stage:
    """A deployed-like worker (gossip, mingle and heartbeats on) on a private Redis."""

    tmp_path: Path
    database_url: str
    redis: RedisServer
    env: dict[str, str]
    workers: list[CeleryWorker] = field(default_factory=list)
    recovered_in: float | None = None

    @property
    def worker(self) -> CeleryWorker:
        return self.workers[-1]

    def start_worker(self) -> CeleryWorker:
        env = {
            **self.env,
            "CELERY_BROKER_URL": self.redis.url,
            "CELERY_RESULT_BACKEND": self.redis.url,
        }
        worker = start_worker(self.tmp_path, self.database_url, extra_env=env, options=())
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
            # a worker whose main process was killed leaves its pool child in its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(worker.log() for worker in self.workers)


# A fault gets the stage and the hourly backfill's result; it returns the result that tells
# the damage is healed (the same one, or the scheduled run that resumes a lost backfill).
Fault = Callable[[Stage, AsyncResult], AsyncResult]


def kill_worker(stage: Stage, result: AsyncResult) -> AsyncResult:
    stage.worker.kill()  # main process and pool child: a crash, an OOM kill, a lost node
    stage.start_worker()
    return result


def kill_pool_child(stage: Stage, result: AsyncResult) -> AsyncResult:
    (child,) = children(stage.worker.process.pid)
    os.kill(child, signal.SIGKILL)
    return result


def kill_main_process(stage: Stage, result: AsyncResult) -> AsyncResult:
    os.kill(stage.worker.process.pid, signal.SIGKILL)
    stage.worker.process.wait(timeout=10)
    stage.start_worker()
    return result


def kill_redis(stage: Stage, result: AsyncResult) -> AsyncResult:
    stage.redis.stop(signal.SIGKILL)
    time.sleep(3)
    assert stage.worker.process.poll() is None, "the worker exited with Redis:\n" + stage.logs()
    stage.redis.start()
    return result


def lose_the_task(stage: Stage, result: AsyncResult) -> AsyncResult:
    """The worker dies and its task is lost with the broker's data (a Redis without its
    append-only file): only the next scheduled hourly run, as beat sends it, can heal this."""
    stage.worker.kill()
    redis.Redis.from_url(stage.redis.url).flushdb()
    stage.start_worker()
    return celery_client(stage.redis.url).send_task(AGGREGATE_TASK, args=("hour",))


def freeze_database(stage: Stage, result: AsyncResult) -> AsyncResult:
    """SIGSTOP of every process of the database server, for longer than the worker waits."""
    with stopped(database_server_processes(stage.database_url)):
        time.sleep(UNRESPONSIVE + 6)
    return result


@dataclass(frozen=True)
class Case:
    fault: Fault | None
    env: dict[str, str] = field(default_factory=dict)
    twice: bool = False  # every task delivered twice under one id


CASES = {
    "worker-kill-9": Case(kill_worker),
    "pool-child-kill-9": Case(kill_pool_child),
    "main-process-kill-9": Case(kill_main_process),
    "redis-kill-9": Case(kill_redis),
    "task-lost-with-its-worker": Case(lose_the_task),
    "database-sigstop": Case(freeze_database),
    "same-task-delivered-twice": Case(None, twice=True),
    "time-limit-mid-backfill": Case(
        None,
        # the statement timeout stays that of the other cases: only the time limit is short
        {
            "OBSERVABILITY_TASK_TIME_LIMIT": "3",
            "OBSERVABILITY_STATEMENT_TIMEOUT": "22",
            "OBSERVABILITY_BATCH_BUCKETS": "4",
        },
    ),
}


def _runs(database_url: str) -> list[dict[str, Any]]:
    with connect(database_url) as conn:
        return rows_as_dicts(
            conn.execute(
                "select id, kind, granularity, status, range_start, range_end, done_until, error"
                " from observability.aggregation_runs order by id"
            )
        )


def _midway(database_url: str, start: datetime, end: datetime) -> bool:
    return any(
        r["status"] == "running" and r["granularity"] == "hour" and start < r["done_until"] < end
        for r in _runs(database_url)
    )


def celery_sync(stage: Stage, case: Case) -> Callable[[str, Traffic], Any]:
    client = celery_client(stage.redis.url)

    def send(args: tuple[str, ...]) -> AsyncResult:
        task_id = str(uuid.uuid4())
        result = client.send_task(BACKFILL_TASK, args=args, task_id=task_id)
        if case.twice:
            client.send_task(BACKFILL_TASK, args=args, task_id=task_id)
        return result

    def sync(database_url: str, traffic: Traffic) -> dict[str, tuple[datetime, datetime]]:
        end = min(traffic.end, datetime.now(UTC))
        windows = {}
        for granularity in GRANULARITIES:
            result = send((traffic.start.isoformat(), end.isoformat(), granularity))
            if granularity == "hour" and case.fault and stage.recovered_in is None:
                assert wait_for(
                    lambda: _midway(database_url, traffic.start, end), timeout=120, interval=0.05
                ), f"the hourly backfill never got midway: {_runs(database_url)}"
                began = time.monotonic()
                result = case.fault(stage, result)
                result.get(timeout=RECOVERY_BUDGET)
                stage.recovered_in = time.monotonic() - began
            else:
                result.get(timeout=RECOVERY_BUDGET)
            last = bucket(end, granularity)
            windows[granularity] = (
                bucket(traffic.start, granularity),
                last if last == end else last + WIDTHS[granularity],
            )
        return windows

    return sync


@pytest.fixture
def stage(
    tmp_path: Path,
    private_redis: RedisServer,
    no_rollups_left: str,  # noqa: F811
) -> Iterator[Stage]:
    stage = Stage(tmp_path, no_rollups_left, private_redis, dict(FAST))
    try:
        yield stage
    finally:
        stage.close()


@pytest.mark.parametrize("name", list(CASES))
def test_the_oracle_finds_nothing_wrong_after_the_worker_heals(
    name: str,
    stage: Stage,
    database_backend: str,
    otlp_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = CASES[name]
    if case.fault is freeze_database and not database_server_processes(stage.database_url):
        pytest.skip("the test database's server does not run on this machine: cannot SIGSTOP it")
    stage.env.update(case.env)
    if "OBSERVABILITY_TASK_TIME_LIMIT" in case.env and database_backend != "embedded":
        # a server that syncs the whole range within one time limit: one-hour batches, hundreds
        stage.env["OBSERVABILITY_BATCH_BUCKETS"] = "1"
    stage.start_worker()
    monkeypatch.setattr(oracle_run, "sync", celery_sync(stage, case))
    result: CaseResult = run_case(stage.database_url, otlp_endpoint, SEED, TRACES, DOCUMENTS)
    samples = stage.worker.scrape()
    logs = stage.logs()
    runs = _runs(stage.database_url)
    print(result.report())
    if case.fault is not None:
        print(f"{name}: healed {stage.recovered_in:.1f} s after the fault")
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)
    assert "Unrecoverable error" not in logs and "CRITICAL" not in logs, logs[-4000:]
    if case.fault is not None:
        assert stage.recovered_in is not None and stage.recovered_in < RECOVERY_BUDGET
    for granularity in GRANULARITIES:
        # healed without a false alarm: nothing failed for good
        failures = "observability_aggregation_task_failures_total"
        assert sample(samples, failures, granularity=granularity) == 0, (granularity, runs)
    assert not [r for r in runs if r["status"] == "running"], runs
    assert not [r for r in runs if r["error"] and "LeaseLost" in r["error"]], runs
    if name == "time-limit-mid-backfill":
        stopped_runs = [r for r in runs if r["status"] == "interrupted"]
        assert stopped_runs, f"no backfill was stopped by the time limit: {runs}"
        assert all(r["error"].startswith("SoftTimeLimitExceeded") for r in stopped_runs)
    if case.fault in (kill_worker, kill_pool_child, kill_main_process, lose_the_task):
        # the fault really cut a run short: a killed run is marked so, and another one finished it
        cut = [r for r in runs if r["granularity"] == "hour" and r["status"] == "interrupted"]
        assert cut, runs
    if case.fault is freeze_database:
        assert [r for r in runs if r["error"] and "DatabaseUnresponsive" in r["error"]], runs
