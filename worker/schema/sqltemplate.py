from __future__ import annotations

import re
from typing import Any

import psycopg

# The schema holding percentile_agg, rollup and approx_percentile, as recorded by
# sql/incremental/009-percentile-sketch-choice.sql: the toolkit's (public) or observability.
SKETCH_SCHEMA = "@sketch_schema@"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


class TemplateError(ValueError):
    """A SQL file uses a placeholder that the database cannot fill in yet."""


def render(text: str, sketch_schema: str) -> str:
    if not _IDENTIFIER.match(sketch_schema):
        raise TemplateError(f"unexpected percentile sketch schema {sketch_schema!r}")
    return text.replace(SKETCH_SCHEMA, sketch_schema)


def recorded_sketch(conn: psycopg.Connection[Any]) -> tuple[str, str] | None:
    """(implementation, function schema) chosen at install time; None before it was chosen."""
    found = conn.execute(
        "select pg_catalog.to_regprocedure('observability.percentile_sketch()') is not null"
    ).fetchone()
    if found is None or not found[0]:
        return None
    row = conn.execute(
        "select implementation, function_schema from observability.percentile_sketch()"
    ).fetchone()
    return None if row is None else (row[0], row[1])


def sketch_merge_language(conn: psycopg.Connection[Any]) -> str | None:
    """The language of the project's sketch merge (sql/idempotent/013-sketch-merge-in-c.sql):
    'c' where the server loaded engine/sketch, 'plpgsql' otherwise; None before the install."""
    row = conn.execute(
        "select l.lanname from pg_catalog.pg_proc as p"
        " join pg_catalog.pg_language as l on l.oid = p.prolang"
        " where p.oid = pg_catalog.to_regprocedure("
        "'observability.sketch_merge(observability.percentile_sketch[])')"
    ).fetchone()
    return None if row is None else row[0]


def render_for(conn: psycopg.Connection[Any], text: str) -> str:
    if SKETCH_SCHEMA not in text:
        return text
    recorded = recorded_sketch(conn)
    if recorded is None:
        raise TemplateError(
            f"{SKETCH_SCHEMA} is used before sql/incremental/009-percentile-sketch-choice.sql "
            "has recorded which percentile sketch to use"
        )
    return render(text, recorded[1])
