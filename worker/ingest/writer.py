from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from worker.ingest import span_events as events
from worker.ingest.items import CHAT_MESSAGE, DOCUMENT_EVENT, SPAN, SPAN_EVENT, TRACE, Kind
from worker.ingest.late import note_deleted
from worker.ingest.pricing import price_spans
from worker.ingest.time_policy import DEFAULT_MAX_FUTURE, TimePolicy, current_policy
from worker.ingest.traces import (
    Extents,
    Window,
    from_roots,
    lock_traces,
    too_long,
    update_totals,
)
from worker.ingest.validation import (
    DEFAULT_LIMITS,
    MILLISECOND,
    Invalid,
    Limits,
)

# Per connection, the kinds whose staging table (a temporary table) already exists.
_STAGED: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Reject:
    kind: str  # "trace" | "span" | "span_event" | "chat_message" | "document_event"
    index: int  # position of the item in the list passed for that kind
    reason: str


@dataclass
class WriteResult:
    written: dict[str, int] = field(default_factory=dict)  # rows inserted or changed, per kind
    rejected: list[Reject] = field(default_factory=list)
    # Items written with a change: a value past its column's range stored as NULL, say.
    warnings: list[str] = field(default_factory=list)


def write_batch(
    conn: psycopg.Connection[Any],
    *,
    traces: Sequence[Mapping[str, Any]] = (),
    spans: Sequence[Mapping[str, Any]] = (),
    chat_messages: Sequence[Mapping[str, Any]] = (),
    document_events: Sequence[Mapping[str, Any]] = (),
    span_events: Sequence[Mapping[str, Any]] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    traces_from_spans: bool = False,
    max_future: timedelta = DEFAULT_MAX_FUTURE,
) -> WriteResult:
    """Validate every item, then upsert the valid ones in one transaction.

    Invalid items come back as rejects with their reason and are not written; a database error
    raises and writes nothing. Items starting more than max_future ahead of now, and traces,
    spans and document events older than the raw-data retention horizon, are rejected too.

    There is one row per trace id and per (trace id, span id), whatever the start times, and
    one per (id, created_at) of chat messages and document events: re-delivering an item updates
    its row (the last delivery wins, also within one batch); an item equal to its stored row is
    not counted as written.
    Writers of the same traces wait for each other, so several processes may write at once.
    Spans without cost_usd that name a model and carry token counts are priced from
    observability.model_prices.

    With traces_from_spans (the OTLP endpoint), each trace item is the report of one root span:
    the stored trace starts at its earliest root's start and ends at its latest root's end,
    takes its name, operation and dimensions from its earliest root, and its total_tokens and
    cost_usd are the sums over its stored spans (NULL when no span has a value). Otherwise trace
    rows are stored as given.

    With span_events (a list, maybe empty), every span of the batch has exactly the events
    given for it afterwards: its stored events that are not given again are deleted. An event
    names its span by trace_id and span_id (a span of this batch) and its position by
    event_index (below limits.max_events_per_span). Without it (None), stored events are left
    as they are.
    """
    result = WriteResult()
    policy = current_policy(conn, max_future)
    batches = []
    # Spans before traces: a trace reported by its roots is derived from the stored spans.
    for kind, items in (
        (SPAN, spans),
        (TRACE, traces),
        (CHAT_MESSAGE, chat_messages),
        (DOCUMENT_EVENT, document_events),
    ):
        rows = _validate(kind, items, limits, policy, result, earliest=traces_from_spans)
        result.written[kind.name] = 0
        if rows:
            batches.append((kind, rows))
        if kind is SPAN and span_events is not None:
            event_rows, rejected = events.validate_events(span_events, rows, limits)
            result.rejected += [Reject(SPAN_EVENT.name, i, reason) for i, reason in rejected]
            result.written[SPAN_EVENT.name] = 0
            if rows:  # even with no events: the spans' stored events are replaced
                batches.append((SPAN_EVENT, event_rows))
    if not batches:
        return result
    write = _Write(batches, result, policy, traces_from_spans)
    nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    staged = _STAGED.setdefault(conn, set())
    warnings = list(result.warnings)
    try:
        _write_all(conn, write, staged, nested)
    except psycopg.errors.UndefinedTable:
        # A staging table remembered from an earlier batch is gone (DISCARD TEMP, say): the
        # batch wrote nothing, so it can run again once with the tables created afresh.
        staged.clear()
        if nested:
            raise
        result.warnings[:] = warnings
        _write_all(conn, write, staged, nested)
    except BaseException:
        staged.clear()
        raise
    return result


@dataclass(frozen=True)
class _Write:
    batches: list[tuple[Kind, list[tuple[Any, ...]]]]
    result: WriteResult
    policy: TimePolicy
    traces_from_spans: bool

    def trace_ids(self) -> set[str]:
        return set(self.trace_times())

    def trace_times(self) -> dict[str, list[datetime]]:
        """The start times of the batch's traces and spans, by trace."""
        times: dict[str, list[datetime]] = {}
        for kind, rows in self.batches:
            if kind in (SPAN, TRACE):
                trace_at, started_at = kind.position("trace_id"), kind.position("started_at")
                for row in rows:
                    times.setdefault(row[trace_at], []).append(row[started_at])
        return times


def _write_all(
    conn: psycopg.Connection[Any], write: _Write, staged: set[str], nested: bool
) -> None:
    result, horizon = write.result, write.policy.lower_bound
    with conn.transaction(), conn.cursor() as cur:
        trace_ids = write.trace_ids()
        lock_traces(cur, trace_ids)
        extents = Extents(cur, trace_ids)
        # Where the rows these items may replace lie (None: every trace is new), then where all
        # rows of these traces lie once the batch is written.
        stored, known = extents.window(horizon), sorted(extents.ranges)
        extents.widen(cur, write.trace_times())
        for kind, rows in write.batches:
            statements = upsert_statements(kind)
            if nested or kind.name not in staged:
                cur.execute(statements.create_stage)
            if nested:
                # Inside the caller's transaction the stage is only emptied at its commit.
                cur.execute(statements.empty_stage)
            if kind is SPAN:
                rows = price_spans(cur, rows, result.warnings)
            elif kind is TRACE and write.traces_from_spans:
                window = extents.window(horizon, trace_ids)
                assert window is not None
                rows, warnings = from_roots(cur, rows, window)
                result.warnings += warnings
            with cur.copy(statements.copy) as copy:
                copy.set_types(statements.copy_types)
                for row in rows:
                    copy.write_row(row)
            if statements.moved is not None and stored is not None:
                delete_moved(cur, statements.moved, stored, known)
            if kind is SPAN_EVENT and stored is not None:
                events.delete_replaced(cur, upsert_statements(SPAN).stage, rows, stored, known)
            cur.execute(statements.upsert)
            result.written[kind.name] = cur.rowcount
        if write.traces_from_spans:
            window = extents.window(horizon, trace_ids)
            assert window is not None
            result.warnings += update_totals(cur, trace_ids, window).warnings
    if not nested:
        # Committed: the staging tables exist for the rest of the session. Created inside the
        # caller's transaction, they would vanish if the caller rolled back.
        staged.update(kind.name for kind, _ in write.batches)


def _validate(
    kind: Kind,
    items: Sequence[Mapping[str, Any]],
    limits: Limits,
    policy: TimePolicy,
    result: WriteResult,
    *,
    earliest: bool,
) -> list[tuple[Any, ...]]:
    # Keyed by identity: a later item with the same identity replaces an earlier one, as a
    # second delivery would (one INSERT ... ON CONFLICT cannot touch a row twice). Trace reports
    # of root spans keep the earliest root instead: it names the trace.
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    time_at = kind.position(kind.time_column)
    retained = kind is not CHAT_MESSAGE
    keep_earliest = earliest and kind is TRACE
    for index, item in enumerate(items):
        try:
            row = kind.validate(item, limits)
            policy.check(kind.time_column, row[time_at], retained=retained)
        except Invalid as exc:
            result.rejected.append(Reject(kind.name, index, str(exc)))
            continue
        identity = kind.identity_of(row)
        if keep_earliest and identity in rows and rows[identity][time_at] < row[time_at]:
            continue
        rows.pop(identity, None)
        rows[identity] = row
    if kind in (SPAN, TRACE):
        _note_long(kind, rows.values(), result.warnings)
    return list(rows.values())


def _note_long(kind: Kind, rows: Iterable[tuple[Any, ...]], warnings: list[str]) -> None:
    """An end time with no duration: the item lasted longer than duration_ms holds."""
    started, ended = kind.position("started_at"), kind.position("ended_at")
    duration = kind.position("duration_ms")
    for row in rows:
        if row[ended] is not None and row[duration] is None:
            ms = (row[ended] - row[started]) // MILLISECOND
            name = "/".join(kind.identity_of(row))
            warnings.append(f"{kind.name} {name}: {too_long('duration_ms', ms)}")


@dataclass(frozen=True)
class UpsertStatements:
    stage: sql.Identifier  # a temporary table
    create_stage: sql.Composed
    empty_stage: sql.Composed
    copy: sql.Composed
    copy_types: list[str]
    upsert: sql.Composed
    # Kinds whose time may change between deliveries: the row of another time to remove.
    moved: MovedStatements | None


@cache
def upsert_statements(kind: Kind) -> UpsertStatements:
    schema, table = kind.table.split(".")
    stage = sql.Identifier(f"ingest_stage_{table}")
    names = kind.column_names
    columns = sql.SQL(", ").join(map(sql.Identifier, names))
    selected = []
    for column in kind.columns:
        ident = sql.Identifier(column.name)
        if column.jsonb:
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
        moved=_moved_statements(kind, target, stage) if kind.time_varies else None,
    )


@dataclass(frozen=True)
class MovedStatements:
    """Finding and removing the stored rows of staged items that now have another time."""

    find: sql.Composed
    delete: sql.Composed
    columns: tuple[str, ...]  # the identity, then the time column
    types: tuple[str, ...]


def _moved_statements(kind: Kind, target: sql.Composable, stage: sql.Identifier) -> MovedStatements:
    # Each staged item is looked up on its own through the primary key (the identity leads it):
    # a plain join was planned as a merge join over every stored row, as the staging table has
    # no statistics. OFFSET 0 keeps the lateral subquery from being flattened into such a join.
    # The window (from observability.trace_extents) keeps out the chunks that cannot hold them.
    time = sql.Identifier(kind.time_column)
    same = sql.SQL(" and ").join(
        sql.SQL("s.{name} = b.{name}").format(name=sql.Identifier(n)) for n in kind.identity
    )
    find = sql.SQL(
        "select {identity}, o.{time} from pg_temp.{stage} as b cross join lateral "
        "(select s.{time} from {target} as s where {same} and s.{time} <> b.{time} "
        "and s.{time} >= %(first)s and s.{time} <= %(last)s offset 0) as o "
        "where b.trace_id = any(%(known)s::text[])"
    ).format(
        identity=sql.SQL(", ").join(
            sql.SQL("b.{}").format(sql.Identifier(n)) for n in kind.identity
        ),
        time=time,
        stage=stage,
        target=target,
        same=same,
    )
    columns = (*kind.identity, kind.time_column)
    types = tuple(kind.columns[kind.position(n)].pg_type for n in columns)
    arrays = sql.SQL(", ").join(
        sql.SQL("pg_catalog.unnest({}::{}[])").format(sql.Placeholder(), sql.SQL(t)) for t in types
    )
    first = sql.Identifier(columns[0])
    delete = sql.SQL(
        "delete from {target} as t using rows from ({arrays}) as m ({names}) "
        "where {matches} and t.{first} = any({ids}::{first_type}[])"
    ).format(
        target=target,
        arrays=arrays,
        names=sql.SQL(", ").join(map(sql.Identifier, columns)),
        matches=sql.SQL(" and ").join(
            sql.SQL("t.{name} = m.{name}").format(name=sql.Identifier(n)) for n in columns
        ),
        first=first,
        ids=sql.Placeholder(),
        first_type=sql.SQL(types[0]),
    )
    return MovedStatements(find, delete, columns, types)


def delete_moved(
    cur: psycopg.Cursor[Any], statements: MovedStatements, stored: Window, known: list[str]
) -> int:
    """Remove the stored rows of the staged items that now have another time; returns how many.
    Only the items of known traces (with rows stored in the window) are looked up."""
    params = {"known": known, **stored.params()}
    moved = cur.execute(statements.find, params).fetchall()
    if not moved:
        return 0
    columns = [list(values) for values in zip(*moved, strict=True)]
    note_deleted(cur, columns[-1])
    cur.execute(statements.delete, [*columns, columns[0]])
    return cur.rowcount
