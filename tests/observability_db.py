from __future__ import annotations

from typing import Any

import psycopg

from worker.models import OBSERVABILITY_MODELS, SCHEMA
from worker.schema.install import uninstall
from worker.schema.migrate import CONNECT_ARGS, libpq_url, migrate

OBSERVABILITY_TABLES = tuple(f"{SCHEMA}.{model.__tablename__}" for model in OBSERVABILITY_MODELS)
TRUNCATE_SQL = f"truncate {', '.join(OBSERVABILITY_TABLES)}"
# Measured on the embedded engine, per test: DELETE of a few rows 3-7 ms, TRUNCATE of the six
# tables 19-41 ms (it rewrites every table and index file), dropping and re-migrating the schema
# about 110 ms. But DELETE leaves the emptied chunks behind, and every statement on a hypertable
# gets slower as chunks pile up (tests with random timestamps create one per day touched). So:
# DELETE, and TRUNCATE (which drops the chunks) once more than CHUNK_LIMIT have accumulated.
DELETE_SQL = "; ".join(f"delete from {table}" for table in OBSERVABILITY_TABLES)
COUNT_CHUNKS_SQL = (
    "select count(*) from _timescaledb_catalog.chunk c"
    " join _timescaledb_catalog.hypertable h on h.id = c.hypertable_id"
    f" where h.schema_name = '{SCHEMA}'"
)
CHUNK_LIMIT = 64


def truncate_observability(conn: psycopg.Connection[Any]) -> None:
    conn.execute(TRUNCATE_SQL.encode())


def empty_observability(conn: psycopg.Connection[Any]) -> None:
    """Remove every row from the observability tables (schema_migrations is left alone)."""
    conn.execute(DELETE_SQL.encode())
    row = conn.execute(COUNT_CHUNKS_SQL.encode()).fetchone()
    if row is not None and row[0] > CHUNK_LIMIT:
        truncate_observability(conn)


def reset_to_head(database_url: str) -> None:
    """Drop the observability schema, forget alembic's revision and migrate from scratch."""
    with psycopg.connect(libpq_url(database_url), autocommit=True, **CONNECT_ARGS) as conn:
        uninstall(conn)
        exists = conn.execute("select to_regclass('public.alembic_version') is not null")
        if exists.fetchone() == (True,):
            conn.execute("delete from public.alembic_version")
    migrate(database_url)
