from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from worker.scheduling.app import app

# Tests use their own Redis database, emptied before each worker starts, so nothing queued by
# an earlier run (or by a worker on this machine) is consumed here.
# TEST_REDIS_URL gives checkouts that run their suites at the same time a database each.
TEST_REDIS = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/14"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(TEST_REDIS, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@dataclass
class CeleryWorker:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children, as a crash or OOM kill would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urlopen(url, timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: Mapping[tuple[str, Any], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def celery_client(url: str) -> Celery:
    """A client of its own for a private broker (the project's app keeps its configuration)."""
    client = Celery("fault-test", broker=url, backend=url)
    client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    return client


# Gossip, mingle and heartbeats make a test worker slower to start and to stop; the deployed
# worker runs with them, so the broker fault tests pass options=() to do the same.
QUIET = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def start_worker(
    tmp_path: Path,
    database_url: str,
    *,
    concurrency: int = 1,
    extra_env: Mapping[str, str] = {},
    options: Sequence[str] = QUIET,
) -> CeleryWorker:
    port = free_port()
    multiproc = tmp_path / f"prometheus-{port}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": TEST_REDIS,
        "CELERY_RESULT_BACKEND": TEST_REDIS,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "WORKER_METRICS_PORT": str(port),
        **extra_env,
    }
    log_path = tmp_path / f"celery-{port}.log"
    command = [
        sys.executable, "-m", "celery", "-A", "worker.scheduling.app", "worker",
        "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=INFO",
        *options, f"--hostname=test-{port}@%h",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = CeleryWorker(process, port, log_path, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Celery worker exited at start:\n{worker.log()}")
        if "ready." in worker.log():
            try:
                worker.scrape()
                return worker
            except OSError:
                pass
        time.sleep(0.2)
    worker.stop()
    raise RuntimeError(f"the Celery worker did not become ready:\n{worker.log()}")


@pytest.fixture(scope="session")
def celery_broker() -> Iterator[str]:
    if not redis_available():
        pytest.fail(f"Redis is not answering at {TEST_REDIS}: start redis-server (see .ci/run)")
    redis.Redis.from_url(TEST_REDIS).flushdb()
    previous = (app.conf.broker_url, app.conf.result_backend)
    app.conf.update(broker_url=TEST_REDIS, result_backend=TEST_REDIS)
    try:
        yield TEST_REDIS
    finally:
        app.conf.update(broker_url=previous[0], result_backend=previous[1])


@pytest.fixture(scope="module")
def celery_worker(
    celery_broker: str, migrated_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """A real prefork Celery worker on the test database and the test Redis, for the module."""
    worker = start_worker(tmp_path_factory.mktemp("celery"), migrated_database_url)
    try:
        yield worker
    finally:
        worker.stop()
