from __future__ import annotations

import psycopg
import pytest


@pytest.mark.toolkit
def test_toolkit_percentiles_where_installed(conn: psycopg.Connection) -> None:
    conn.execute("create extension if not exists timescaledb_toolkit")
    p50 = conn.execute(
        "select approx_percentile(0.5, percentile_agg(x)) from generate_series(1, 1001) x"
    ).fetchone()[0]
    assert abs(p50 - 501) / 501 < 0.01


def test_toolkit_availability_matches_the_catalog(
    conn: psycopg.Connection, toolkit_available: bool, database_backend: str
) -> None:
    names = {r[0] for r in conn.execute("select name from pg_available_extensions").fetchall()}
    assert ("timescaledb_toolkit" in names) == toolkit_available
    if database_backend == "embedded":
        assert not toolkit_available
