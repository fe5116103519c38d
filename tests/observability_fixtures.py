from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from tests.observability_db import empty_observability, truncate_observability
from worker.schema.migrate import CONNECT_ARGS, migrate, sqlalchemy_url

__all__ = [
    "clean_observability",
    "migrated_database_url",
    "obs_async_session",
    "obs_cleanup_conn",
    "obs_engine",
    "obs_session",
]

# The database is shared by the whole session: migrate once, then empty the observability
# tables after every test that writes to them. Imported by tests/conftest.py.


@pytest.fixture(scope="session")
def migrated_database_url(database_url: str) -> str:
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True, **CONNECT_ARGS) as connection:
        truncate_observability(connection)  # leftovers of an earlier run on TEST_DATABASE_URL
    return database_url


@pytest.fixture(scope="session")
def obs_cleanup_conn(migrated_database_url: str) -> Iterator[psycopg.Connection]:
    connection = psycopg.connect(migrated_database_url, autocommit=True, **CONNECT_ARGS)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def clean_observability(
    migrated_database_url: str, obs_cleanup_conn: psycopg.Connection
) -> Iterator[str]:
    """The migrated database URL; the observability tables are emptied after the test."""
    yield migrated_database_url
    empty_observability(obs_cleanup_conn)


@pytest.fixture(scope="session")
def obs_engine(migrated_database_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(migrated_database_url), connect_args=CONNECT_ARGS)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def obs_session(obs_engine: Engine, clean_observability: str) -> Iterator[Session]:
    """A sync ORM session on the migrated database; closed before the tables are truncated."""
    with Session(obs_engine) as session:
        yield session


@pytest.fixture
async def obs_async_session(clean_observability: str) -> AsyncIterator[AsyncSession]:
    """An AsyncSession (psycopg 3 async) on the migrated database."""
    engine = create_async_engine(
        sqlalchemy_url(clean_observability, async_driver=True),
        poolclass=NullPool,
        connect_args=CONNECT_ARGS,
    )
    try:
        async with AsyncSession(engine) as session:
            yield session
    finally:
        await engine.dispose()
