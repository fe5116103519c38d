from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from worker.ingest.items import CHAT_MESSAGE, DOCUMENT_EVENT, SPAN, TRACE, Kind
from worker.ingest.pricing import price_spans
from worker.ingest.validation import DEFAULT_LIMITS, Invalid, Limits, json_array, json_object

# Per connection, the kinds whose staging table (a temporary table) already exists.
_STAGED: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Reject:
    kind: str  # "trace" | "span" | "chat_message" | "document_event"
    index: int  # position of the item in the list passed for that kind
    reason: str


@dataclass
class WriteResult:
    written: dict[str, int] = field(default_factory=dict)  # rows inserted or changed, per kind
    rejected: list[Reject] = field(default_factory=list)


def write_batch(
    conn: psycopg.Connection[Any],
    *,
    traces: Sequence[Mapping[str, Any]] = (),
    spans: Sequence[Mapping[str, Any]] = (),
    chat_messages: Sequence[Mapping[str, Any]] = (),
    document_events: Sequence[Mapping[str, Any]] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> WriteResult:
    """Validate every item, then upsert the valid ones in one transaction.

    Invalid items come back as rejects with their reason and are not written; a database error
    raises and writes nothing. Re-delivering an item updates its row (the last delivery wins,
    also within one batch); an item equal to its stored row is not counted as written.
    Traces are keyed by (trace_id, started_at), spans by (trace_id, span_id, started_at) and
    chat messages and document events by (id, created_at): a re-delivery with another start
    time or creation time is a new row. Spans without cost_usd that name a model and carry
    token counts are priced from observability.model_prices.
    """
    result = WriteResult()
    batches = []
    for kind, items in (
        (TRACE, traces),
        (SPAN, spans),
        (CHAT_MESSAGE, chat_messages),
        (DOCUMENT_EVENT, document_events),
    ):
        rows = _validate(kind, items, limits, result.rejected)
        result.written[kind.name] = 0
        if rows:
            batches.append((kind, rows))
    if not batches:
        return result
    nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    staged = _STAGED.setdefault(conn, set())
    try:
        _write_all(conn, batches, result, staged, nested)
    except psycopg.errors.UndefinedTable:
        # A staging table remembered from an earlier batch is gone (DISCARD TEMP, say): the
        # batch wrote nothing, so it can run again once with the tables created afresh.
        staged.clear()
        if nested:
            raise
        _write_all(conn, batches, result, staged, nested)
    except BaseException:
        staged.clear()
        raise
    return result


def _write_all(
    conn: psycopg.Connection[Any],
    batches: list[tuple[Kind, list[tuple[Any, ...]]]],
    result: WriteResult,
    staged: set[str],
    nested: bool,
) -> None:
    with conn.transaction(), conn.cursor() as cur:
        for kind, rows in batches:
            statements = upsert_statements(kind)
            if nested or kind.name not in staged:
                cur.execute(statements.create_stage)
            if nested:
                # Inside the caller's transaction the stage is only emptied at its commit.
                cur.execute(statements.empty_stage)
            if kind is SPAN:
                rows = price_spans(cur, rows)
            with cur.copy(statements.copy) as copy:
                copy.set_types(statements.copy_types)
                for row in rows:
                    copy.write_row(row)
            cur.execute(statements.upsert)
            result.written[kind.name] = cur.rowcount
    if not nested:
        # Committed: the staging tables exist for the rest of the session. Created inside the
        # caller's transaction, they would vanish if the caller rolled back.
        staged.update(kind.name for kind, _ in batches)


def _validate(
    kind: Kind, items: Sequence[Mapping[str, Any]], limits: Limits, rejected: list[Reject]
) -> list[tuple[Any, ...]]:
    # Keyed by the upsert key: a later item with the same key replaces an earlier one, as a
    # second delivery would (one INSERT ... ON CONFLICT cannot touch a row twice).
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for index, item in enumerate(items):
        try:
            row = kind.validate(item, limits)
        except Invalid as exc:
            rejected.append(Reject(kind.name, index, str(exc)))
            continue
        key = kind.key_of(row)
        rows.pop(key, None)
        rows[key] = row
    return list(rows.values())


@dataclass(frozen=True)
class UpsertStatements:
    stage: sql.Identifier  # a temporary table
    create_stage: sql.Composed
    empty_stage: sql.Composed
    copy: sql.Composed
    copy_types: list[str]
    upsert: sql.Composed


@cache
def upsert_statements(kind: Kind) -> UpsertStatements:
    schema, table = kind.table.split(".")
    stage = sql.Identifier(f"ingest_stage_{table}")
    names = kind.column_names
    columns = sql.SQL(", ").join(map(sql.Identifier, names))
    selected = []
    for column in kind.columns:
        ident = sql.Identifier(column.name)
        if column.check in (json_object, json_array):
            selected.append(sql.SQL("b.{}::jsonb").format(ident))
        else:
            selected.append(sql.SQL("b.{}").format(ident))
    source = sql.SQL("pg_temp.{} as b").format(stage)
    updated = [n for n in names if n not in kind.key]
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    upsert = sql.SQL(
        "insert into {target} as t ({columns}) select {selected} from {source} "
        "on conflict ({key}) do update set {assignments} "
        "where ({old}) is distinct from ({new})"
    ).format(
        target=target,
        columns=columns,
        selected=sql.SQL(", ").join(selected),
        source=source,
        key=sql.SQL(", ").join(map(sql.Identifier, kind.key)),
        assignments=sql.SQL(", ").join(
            sql.SQL("{} = excluded.{}").format(sql.Identifier(n), sql.Identifier(n))
            for n in updated
        ),
        old=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(n)) for n in updated),
        new=sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(n)) for n in updated),
    )
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type)) for c in kind.columns
    )
    return UpsertStatements(
        stage=stage,
        create_stage=sql.SQL(
            "create temporary table if not exists {} ({}) on commit delete rows"
        ).format(stage, definition),
        empty_stage=sql.SQL("delete from pg_temp.{}").format(stage),
        copy=sql.SQL("copy pg_temp.{} ({}) from stdin (format binary)").format(stage, columns),
        copy_types=[c.pg_type for c in kind.columns],
        upsert=upsert,
    )
