from __future__ import annotations

import psycopg
import pytest

from tests.rollup_support import rollup_conn
from worker.schema.sqltemplate import recorded_sketch

__all__ = ["rollup_conn"]


def _definition(conn: psycopg.Connection, rollup: str) -> str:
    row = conn.execute(
        "select view_definition from timescaledb_information.continuous_aggregates"
        " where view_schema = 'observability' and view_name = %s",
        [rollup],
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.toolkit
def test_the_rollups_use_the_toolkit_where_it_is_installed(
    rollup_conn: psycopg.Connection,
) -> None:
    schema = rollup_conn.execute(
        "select n.nspname from pg_catalog.pg_extension as e"
        " join pg_catalog.pg_namespace as n on n.oid = e.extnamespace"
        " where e.extname = 'timescaledb_toolkit'"
    ).fetchone()
    assert schema is not None
    assert recorded_sketch(rollup_conn) == ("timescaledb_toolkit", schema[0])
    hourly = _definition(rollup_conn, "traces_hourly")
    assert f"{schema[0]}.percentile_agg(" in hourly or " percentile_agg(" in hourly
    assert "observability.percentile_agg" not in hourly
    assert "observability.rollup" not in _definition(rollup_conn, "traces_daily")


def test_without_the_toolkit_the_project_sketch_is_recorded(
    rollup_conn: psycopg.Connection, toolkit_available: bool
) -> None:
    if toolkit_available:
        pytest.skip("timescaledb_toolkit is installed on this database")
    assert recorded_sketch(rollup_conn) == ("observability", "observability")
    assert "observability.percentile_agg(" in _definition(rollup_conn, "traces_hourly")
    assert "observability.rollup(" in _definition(rollup_conn, "llm_spans_weekly")
