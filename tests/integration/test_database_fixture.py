from __future__ import annotations

import psycopg

from tests.database import BACKENDS


def test_database_answers_queries(conn: psycopg.Connection, database_backend: str) -> None:
    assert database_backend in BACKENDS
    assert conn.execute("select 1").fetchone() == (1,)


def test_conn_is_autocommit(conn: psycopg.Connection) -> None:
    assert conn.autocommit
