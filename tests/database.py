from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg

from worker.embedded.engine import EmbeddedEngine

TIMESCALE_IMAGE = "timescale/timescaledb-ha:pg17"
BACKEND_ENV = "OBS_TEST_BACKEND"
# Not DATABASE_URL, which points the worker at a real (maybe production) database: the suite
# empties tables and drops the schema of the database it is given.
URL_ENV = "TEST_DATABASE_URL"
BACKENDS = ("env", "testcontainers", "embedded")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Database:
    backend: str
    url: str


def docker_available(timeout: float = 3.0) -> bool:
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def select_backend(env: Mapping[str, str], docker_ok: Callable[[], bool] = docker_available) -> str:
    """Pick where the test database comes from: TEST_DATABASE_URL, then Docker, then embedded.

    OBS_TEST_BACKEND=testcontainers|embedded forces a choice when TEST_DATABASE_URL is unset.
    """
    if env.get(URL_ENV):
        return "env"
    forced = env.get(BACKEND_ENV, "").strip().lower()
    if forced:
        if forced not in BACKENDS[1:]:
            raise ValueError(f"{BACKEND_ENV} must be one of {BACKENDS[1:]}, got {forced!r}")
        return forced
    return "testcontainers" if docker_ok() else "embedded"


def wait_for_queries(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
                conn.execute("select 1").fetchone()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def _testcontainers_url() -> Iterator[str]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer

    with PostgresContainer(TIMESCALE_IMAGE, driver=None) as container:
        url = container.get_connection_url()
        wait_for_queries(url)
        yield url


@contextlib.contextmanager
def _embedded_url(log_dir: Path) -> Iterator[str]:
    with EmbeddedEngine(log_path=log_dir / "engine.log") as engine:
        yield engine.url


@contextlib.contextmanager
def open_database(
    backend: str, log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Database]:
    env = os.environ if env is None else env
    if backend == "env":
        yield Database("env", env[URL_ENV])
    elif backend == "testcontainers":
        with _testcontainers_url() as url:
            yield Database("testcontainers", url)
    elif backend == "embedded":
        with _embedded_url(log_dir) as url:
            yield Database("embedded", url)
    else:
        raise ValueError(f"unknown database backend {backend!r}")
