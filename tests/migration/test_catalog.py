from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import Column, Integer, MetaData

from tests.sql_catalog import declared_names
from worker.models import Base
from worker.schema.migrate import CONNECT_ARGS, connect, model_differences

HYPERTABLES = {
    "traces": ("started_at", timedelta(days=1)),
    "spans": ("started_at", timedelta(days=1)),
    "span_events": ("span_started_at", timedelta(days=1)),
    "document_events": ("created_at", timedelta(days=1)),
    "chat_messages": ("created_at", timedelta(days=7)),
    "metrics_aggregates": ("bucket_time", timedelta(days=7)),
}


@pytest.fixture(scope="module")
def db(migrated_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(migrated_database_url, autocommit=True, **CONNECT_ARGS) as connection:
        yield connection


def _names(db: psycopg.Connection, query: str) -> set[str]:
    return {row[0] for row in db.execute(query).fetchall()}


def test_timescaledb_is_installed_and_the_toolkit_where_available(db: psycopg.Connection) -> None:
    installed = _names(db, "select extname from pg_extension")
    available = _names(db, "select name from pg_available_extensions")
    assert "timescaledb" in installed
    assert ("timescaledb_toolkit" in installed) == ("timescaledb_toolkit" in available)


def test_hypertables_and_chunk_intervals(db: psycopg.Connection) -> None:
    rows = db.execute(
        "select hypertable_name, column_name, time_interval"
        " from timescaledb_information.dimensions where hypertable_schema = 'observability'"
    ).fetchall()
    assert {name: (column, interval) for name, column, interval in rows} == HYPERTABLES


def test_provider_sync_status_is_a_plain_table(db: psycopg.Connection) -> None:
    hypertables = _names(
        db,
        "select hypertable_name from timescaledb_information.hypertables"
        " where hypertable_schema = 'observability'",
    )
    assert hypertables == set(HYPERTABLES)
    kind = db.execute(
        "select relkind from pg_class where oid = %s::regclass",
        ["observability.provider_sync_status"],
    ).fetchone()
    assert kind == ("r",)


def test_tables_match_the_sql_and_the_models(db: psycopg.Connection) -> None:
    tables = _names(
        db,
        "select tablename from pg_tables where schemaname = 'observability'",
    )
    assert tables == declared_names().tables
    assert tables - {"schema_migrations"} == {t.name for t in Base.metadata.sorted_tables}


def test_every_named_constraint_exists_and_no_other(db: psycopg.Connection) -> None:
    declared = declared_names()
    existing = _names(
        db,
        "select conname from pg_constraint where connamespace = 'observability'::regnamespace",
    )
    assert existing == declared.check_constraints | declared.key_constraints


def test_every_named_index_exists_and_no_other(db: psycopg.Connection) -> None:
    declared = declared_names()
    existing = _names(db, "select indexname from pg_indexes where schemaname = 'observability'")
    assert existing == declared.indexes | declared.key_constraints


def test_every_index_and_table_says_why_it_exists(db: psycopg.Connection) -> None:
    undocumented = _names(
        db,
        "select c.relname from pg_class c"
        " where c.relnamespace = 'observability'::regnamespace and c.relkind in ('r', 'i')"
        " and coalesce(obj_description(c.oid, 'pg_class'), '') = ''"
        " and c.relname not like 'schema_migrations%'",
    )
    assert undocumented == set()


@pytest.mark.parametrize(
    ("table", "column", "type_", "source"),
    [
        ("spans", "time_to_first_token_ms", "integer", "gen_ai.server.time_to_first_token"),
        ("spans", "input_tokens", "integer", "gen_ai.usage.input_tokens"),
        ("spans", "output_tokens", "integer", "gen_ai.usage.output_tokens"),
        ("spans", "provider", "text", "gen_ai.provider.name"),
        ("spans", "model", "text", "gen_ai.request.model"),
        ("spans", "kb_id", "uuid", "gen_ai.data_source.id"),
        ("spans", "cost_usd", "numeric(10,6)", "cost"),
        ("traces", "operation_type", "text", "gen_ai.operation.name"),
        ("traces", "session_id", "text", "session.id"),
        ("traces", "cost_usd", "numeric(10,6)", "cost"),
    ],
)
def test_llm_columns_and_where_they_come_from(
    db: psycopg.Connection, table: str, column: str, type_: str, source: str
) -> None:
    row = db.execute(
        "select format_type(atttypid, atttypmod), col_description(attrelid, attnum)"
        " from pg_attribute where attrelid = %s::regclass and attname = %s",
        [f"observability.{table}", column],
    ).fetchone()
    assert row is not None, f"{table}.{column} is missing"
    assert row[0] == type_
    assert source in (row[1] or "")


def test_unique_keys_of_hypertables_contain_the_time_column(db: psycopg.Connection) -> None:
    rows = db.execute(
        "select t.relname, i.relname, array_agg(a.attname::text)"
        " from pg_index x join pg_class i on i.oid = x.indexrelid"
        " join pg_class t on t.oid = x.indrelid"
        " join pg_attribute a on a.attrelid = t.oid and a.attnum = any(x.indkey)"
        " where t.relnamespace = 'observability'::regnamespace and x.indisunique"
        " group by 1, 2"
    ).fetchall()
    for table, index, columns in rows:
        if table in HYPERTABLES:
            assert HYPERTABLES[table][0] in columns, index


def test_metrics_upsert_key(db: psycopg.Connection) -> None:
    row = db.execute(
        "select pg_get_constraintdef(oid) from pg_constraint"
        " where conname = 'metrics_aggregates_pkey'"
    ).fetchone()
    assert row == (
        "PRIMARY KEY (metric_type, granularity, dimension_type, dimension_value, bucket_time)",
    )


def test_models_agree_with_the_migrated_database(migrated_database_url: str) -> None:
    with connect(migrated_database_url) as connection:
        assert model_differences(connection) == []


def test_model_comparison_sees_a_difference(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proves the comparison above looks at the observability schema at all.
    metadata = MetaData(schema="observability")
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    metadata.tables["observability.traces"].append_column(Column("extra", Integer))
    monkeypatch.setattr(Base, "metadata", metadata)
    with connect(migrated_database_url) as connection:
        differences = model_differences(connection)
    assert [d[0] for d in differences] == ["add_column"]
