from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.database import TIMESCALE_IMAGE, Database, open_database, select_backend
from worker.embedded.engine import default_engine_dir

# Fixtures of the schema, the rollup worker and Celery live in these modules, by topic.
pytest_plugins = [
    "tests.observability_fixtures",
    "tests.aggregation_support",
    "tests.celery_support",
    "tests.redis_server",
]

_BACKEND = pytest.StashKey[str]()
_ENGINE_LOG = pytest.StashKey[Path]()
_DESCRIPTIONS = {
    "env": "TEST_DATABASE_URL from the environment",
    "testcontainers": f"Docker container {TIMESCALE_IMAGE}",
    "embedded": "embedded engine ({engine_dir}), in memory",
}


def _backend(config: pytest.Config) -> str:
    if _BACKEND not in config.stash:
        config.stash[_BACKEND] = select_backend(os.environ)
    return config.stash[_BACKEND]


def pytest_configure(config: pytest.Config) -> None:
    # Code under test falls back to DATABASE_URL when given no URL; in a shell set up for a real
    # database, that fallback must not reach it. Tests that need the variable set it themselves.
    os.environ.pop("DATABASE_URL", None)


def pytest_report_header(config: pytest.Config) -> str:
    backend = _backend(config)
    detail = _DESCRIPTIONS[backend].format(engine_dir=default_engine_dir())
    return f"database backend: {backend} — {detail}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    log_path = terminalreporter.config.stash.get(_ENGINE_LOG, None)
    if log_path is not None:
        terminalreporter.write_line(f"embedded engine log: {log_path}")


@pytest.fixture(scope="session")
def _database(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    log_dir = tmp_path_factory.mktemp("database")
    backend = _backend(pytestconfig)
    if backend == "embedded":
        pytestconfig.stash[_ENGINE_LOG] = log_dir / "engine.log"
    with open_database(backend, log_dir) as database:
        yield database


@pytest.fixture(scope="session")
def database_url(_database: Database) -> str:
    return _database.url


@pytest.fixture(scope="session")
def database_backend(_database: Database) -> str:
    return _database.backend


@pytest.fixture(scope="session")
def toolkit_available(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as c:
        row = c.execute(
            "select count(*) from pg_available_extensions where name = 'timescaledb_toolkit'"
        ).fetchone()
    return bool(row and row[0])


@pytest.fixture(autouse=True)
def _skip_without_toolkit(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("toolkit") is None:
        return
    if not request.getfixturevalue("toolkit_available"):
        pytest.skip("timescaledb_toolkit is not installed on this database")


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    connection = psycopg.connect(database_url, autocommit=True)
    try:
        yield connection
    finally:
        connection.close()
