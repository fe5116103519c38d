from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg

from worker.schema.install import SCHEMA
from worker.schema.sqlfiles import SqlLayout, discover

_COMMENTS = re.compile(r"--[^\n]*")
_CONSTRAINT = re.compile(r"\bconstraint\s+([a-z_][a-z0-9_]*)\s+(check|primary\s+key|unique)\b")
_INDEX = re.compile(
    r"\bcreate\s+(?:unique\s+)?index\s+(?:concurrently\s+)?(?:if\s+not\s+exists\s+)?"
    r"([a-z_][a-z0-9_]*)\s+on\s+([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)"
)
_TABLE = re.compile(r"\bcreate\s+table\s+(?:if\s+not\s+exists\s+)?[a-z_]+\.([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class DeclaredNames:
    tables: frozenset[str]
    check_constraints: frozenset[str]
    key_constraints: frozenset[str]  # primary keys and unique constraints (each has an index)
    indexes: frozenset[str]  # created with create index


def declared_names(layout: SqlLayout | None = None) -> DeclaredNames:
    """Tables, constraints and indexes the SQL files create, read from the SQL text."""
    layout = layout or discover()
    text = "\n".join(
        _COMMENTS.sub("", f.text) for f in (layout.head, *layout.incremental, *layout.idempotent)
    ).lower()
    constraints = [(m[1], m[2]) for m in _CONSTRAINT.finditer(text)]
    return DeclaredNames(
        tables=frozenset(m[1] for m in _TABLE.finditer(text)),
        check_constraints=frozenset(name for name, kind in constraints if kind == "check"),
        key_constraints=frozenset(name for name, kind in constraints if kind != "check"),
        indexes=frozenset(m[1] for m in _INDEX.finditer(text)),
    )


_QUERIES: dict[str, str] = {
    "schema": "select obj_description(oid, 'pg_namespace') from pg_namespace where nspname = %s",
    "tables": """
        select c.relname, c.relkind, obj_description(c.oid, 'pg_class')
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = %s and c.relkind in ('r', 'p', 'v', 'm', 'f')
        order by 1""",
    "columns": """
        select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
        from pg_attribute a
        join pg_class c on c.oid = a.attrelid
        join pg_namespace n on n.oid = c.relnamespace
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where n.nspname = %s and c.relkind = 'r' and a.attnum > 0 and not a.attisdropped
        order by 1, 2""",
    "constraints": """
        select c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid)
        from pg_constraint c join pg_namespace n on n.oid = c.connamespace
        where n.nspname = %s
        order by 1, 2""",
    "indexes": """
        select t.relname, i.relname, pg_get_indexdef(i.oid), obj_description(i.oid, 'pg_class')
        from pg_index x
        join pg_class i on i.oid = x.indexrelid
        join pg_class t on t.oid = x.indrelid
        join pg_namespace n on n.oid = i.relnamespace
        where n.nspname = %s
        order by 1, 2""",
    "triggers": """
        select c.relname, t.tgname, pg_get_triggerdef(t.oid)
        from pg_trigger t
        join pg_class c on c.oid = t.tgrelid
        join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = %s and not t.tgisinternal
        order by 1, 2""",
    "hypertables": """
        select hypertable_name, num_dimensions, compression_enabled, tablespaces
        from timescaledb_information.hypertables
        where hypertable_schema = %s
        order by 1""",
    "dimensions": """
        select hypertable_name, dimension_number, column_name, column_type::text,
               dimension_type, time_interval, integer_interval, num_partitions
        from timescaledb_information.dimensions
        where hypertable_schema = %s
        order by 1, 2""",
    "migrations": "select name, sha256 from observability.schema_migrations order by 1",
}


# TimescaleDB's own triggers pass its internal hypertable id, which a reinstall renumbers:
# continuous_agg_invalidation_trigger('53').
_INTERNAL_ID_ARGUMENT = re.compile(r"\('\d+'\)")


def _normalise(key: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if key == "triggers" and str(row[1]).startswith("ts_"):
        return (*row[:2], _INTERNAL_ID_ARGUMENT.sub("('<id>')", row[2]))
    return row


def dump_catalog(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Everything about the observability schema that an install decides, minus timestamps
    and TimescaleDB's internal ids."""
    dump: dict[str, list[tuple[Any, ...]]] = {}
    for key, query in _QUERIES.items():
        params = [] if "%s" not in query else [SCHEMA]
        dump[key] = [_normalise(key, tuple(row)) for row in conn.execute(query, params).fetchall()]
    return dump
