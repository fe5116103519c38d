from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from worker.ingest.items import TRACE
from worker.ingest.pricing import COST_SOURCE_KEY, COST_SOURCE_SPANS
from worker.ingest.validation import COST_LIMIT, INT32_MAX, MILLISECOND

# Writers of one trace are serialized by transaction-level advisory locks, so that a trace's
# identity (one row per trace id, per span id) and its totals stay right with several writers
# in separate processes. A transaction touching few traces takes a shared lock on each trace's
# bucket and an exclusive lock on the trace; one touching many takes its buckets exclusively,
# which bounds the locks it holds (PostgreSQL's lock table is shared and finite) while still
# excluding every writer of the same traces.
FINE_LOCK_LIMIT = 256
LOCK_BUCKETS = 1024
LOCK_CLASS = 0x6F627376  # the first key of the bucket locks, apart from other advisory locks

_BUCKET_LOCKS = """
select pg_catalog.{function}(%(class)s, b.bucket)
from (
  select distinct (pg_catalog.hashtextextended(t, 0) & %(mask)s)::integer as bucket
  from pg_catalog.unnest(%(ids)s::text[]) as t
  order by 1
) as b
"""
_TRACE_LOCKS = """
select pg_catalog.pg_advisory_xact_lock(k.key)
from (
  select distinct pg_catalog.hashtextextended(t, 0) as key
  from pg_catalog.unnest(%(ids)s::text[]) as t
  order by 1
) as k
"""

# The roots (spans without a parent) of each trace as stored, this batch's included.
_ROOTS = """
select s.trace_id, pg_catalog.min(s.started_at), pg_catalog.max(s.ended_at),
  pg_catalog.bool_or(s.status = 'error'), pg_catalog.bool_or(s.ended_at is null)
from observability.spans as s
where s.trace_id = any(%(ids)s::text[]) and s.started_at >= %(first)s
  and s.started_at <= %(last)s and s.parent_span_id is null
group by s.trace_id
"""
_STORED_TRACES = """
select {columns}
from observability.traces as t
where t.trace_id = any(%(ids)s::text[]) and t.started_at >= %(first)s
  and t.started_at <= %(last)s
"""

# Sums over nothing stay NULL (unknown), never zero; tokens are added as bigint, as two int4
# counts near their maximum overflow int4.
_SUMS = """
select s.trace_id,
  pg_catalog.sum(coalesce(s.input_tokens, 0)::bigint + coalesce(s.output_tokens, 0)::bigint)
    filter (where s.input_tokens is not null or s.output_tokens is not null),
  pg_catalog.sum(s.cost_usd)
from observability.spans as s
where s.trace_id = any(%(ids)s::text[]) and s.started_at >= %(first)s
  and s.started_at <= %(last)s
group by s.trace_id
"""
_SET_TOTALS = """
update observability.traces as t
set total_tokens = v.tokens, cost_usd = v.cost, attributes = t.attributes || %(mark)s::jsonb
from rows from (pg_catalog.unnest(%(ids)s::text[]), pg_catalog.unnest(%(tokens)s::integer[]),
  pg_catalog.unnest(%(costs)s::numeric[])) as v (trace_id, tokens, cost)
where t.trace_id = v.trace_id and t.started_at >= %(first)s and t.started_at <= %(last)s
  and (t.total_tokens is distinct from v.tokens or t.cost_usd is distinct from v.cost
    or not t.attributes @> %(mark)s::jsonb)
"""
_EXTENTS = """
select e.trace_id, e.first_started_at, e.last_started_at from observability.trace_extents as e
where e.trace_id = any(%s::text[])
"""
_WIDEN = """
insert into observability.trace_extents as e (trace_id, first_started_at, last_started_at)
select * from rows from (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::timestamptz[]),
  pg_catalog.unnest(%s::timestamptz[]))
on conflict (trace_id) do update
set first_started_at = least(e.first_started_at, excluded.first_started_at),
  last_started_at = greatest(e.last_started_at, excluded.last_started_at)
where excluded.first_started_at < e.first_started_at
  or excluded.last_started_at > e.last_started_at
"""
SPANS_MARK = json.dumps({COST_SOURCE_KEY: COST_SOURCE_SPANS})

_POS = {name: TRACE.position(name) for name in TRACE.column_names}


@dataclass(frozen=True)
class Window:
    """Where stored rows of some traces may lie: started_at in [first, last]."""

    first: datetime
    last: datetime

    def params(self) -> dict[str, datetime]:
        return {"first": self.first, "last": self.last}


class Extents:
    """The stored time ranges of a set of traces (observability.trace_extents)."""

    def __init__(self, cur: psycopg.Cursor[Any], trace_ids: Collection[str]) -> None:
        self.ranges: dict[str, tuple[datetime, datetime]] = {
            trace_id: (first, last)
            for trace_id, first, last in cur.execute(_EXTENTS, [sorted(trace_ids)])
        }

    def window(self, horizon: datetime, trace_ids: Iterable[str] | None = None) -> Window | None:
        """The range holding every stored row of these traces (all known ones by default), cut
        at the retention horizon; None when none of them has a stored row."""
        ids = self.ranges if trace_ids is None else trace_ids
        found = [self.ranges[t] for t in ids if t in self.ranges]
        if not found:
            return None
        return Window(max(horizon, min(f for f, _ in found)), max(last for _, last in found))

    def widen(self, cur: psycopg.Cursor[Any], times: dict[str, list[datetime]]) -> None:
        """Record that these traces now have rows at these times too."""
        ids, firsts, lasts = [], [], []
        for trace_id, started in sorted(times.items()):
            first, last = min(started), max(started)
            known = self.ranges.get(trace_id)
            if known is not None:
                if known[0] <= first and last <= known[1]:
                    continue
                first, last = min(first, known[0]), max(last, known[1])
            self.ranges[trace_id] = (first, last)
            ids.append(trace_id)
            firsts.append(first)
            lasts.append(last)
        if ids:
            cur.execute(_WIDEN, [ids, firsts, lasts])


def lock_traces(cur: psycopg.Cursor[Any], trace_ids: Collection[str]) -> None:
    """Wait for, then hold until the transaction ends, the right to write these traces."""
    ids = sorted(set(trace_ids))
    if not ids:
        return
    params = {"ids": ids, "class": LOCK_CLASS, "mask": LOCK_BUCKETS - 1}
    if len(ids) <= FINE_LOCK_LIMIT:
        cur.execute(_BUCKET_LOCKS.format(function="pg_advisory_xact_lock_shared"), params)
        cur.execute(_TRACE_LOCKS, params)
    else:
        cur.execute(_BUCKET_LOCKS.format(function="pg_advisory_xact_lock"), params)


def from_roots(
    cur: psycopg.Cursor[Any], rows: list[tuple[Any, ...]], window: Window
) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Trace rows reported by root spans, merged with what is stored: the trace starts with its
    earliest root and ends with its latest; it failed if a root failed and runs while a root
    runs; its name, operation, user, session and knowledge base are those of its earliest root.
    Returns the rows to write and warnings."""
    ids = [row[_POS["trace_id"]] for row in rows]
    bounds = {"ids": ids, **window.params()}
    roots = {r[0]: r[1:] for r in cur.execute(_ROOTS, bounds)}
    columns = ", ".join(
        f"t.{name}::text" if name == "attributes" else f"t.{name}" for name in TRACE.column_names
    )
    stored = {r[0]: r for r in cur.execute(_STORED_TRACES.format(columns=columns), bounds)}
    merged, warnings = [], []
    for row in rows:
        trace_id = row[_POS["trace_id"]]
        found = roots.get(trace_id)
        if found is None:  # its root span was refused: the report stands alone
            merged.append(row)
            continue
        first, last, failed, running = found
        old = stored.get(trace_id)
        base = row if old is None or row[_POS["started_at"]] <= first else old
        values = list(base)
        values[_POS["started_at"]], values[_POS["ended_at"]] = first, last
        values[_POS["status"]] = "error" if failed else "running" if running else "ok"
        values[_POS["duration_ms"]] = None
        if last is not None:
            duration = (last - first) // MILLISECOND
            if duration <= INT32_MAX:
                values[_POS["duration_ms"]] = duration
            else:
                warnings.append(f"trace {trace_id}: {too_long('duration_ms', duration)}")
        merged.append(tuple(values))
    return merged, warnings


def too_long(column: str, duration_ms: int) -> str:
    return (
        f"{column} stored as NULL: {duration_ms:,} ms is more than the column holds "
        f"({INT32_MAX:,} ms, about 24.8 days)"
    )


@dataclass(frozen=True)
class Totals:
    traces: int  # traces whose totals were summed
    warnings: list[str]


def update_totals(cur: psycopg.Cursor[Any], trace_ids: Iterable[str], window: Window) -> Totals:
    """Sum the stored spans' tokens and costs into their traces. A sum over no value stays NULL;
    a sum past its column's range is stored as NULL, with a warning naming the trace."""
    ids = sorted(set(trace_ids))
    if not ids:
        return Totals(0, [])
    names, tokens, costs, warnings = [], [], [], []
    for trace_id, token_sum, cost_sum in cur.execute(_SUMS, {"ids": ids, **window.params()}):
        if token_sum is not None and token_sum > INT32_MAX:
            warnings.append(
                f"trace {trace_id}: total_tokens stored as NULL: its spans sum to "
                f"{token_sum:,}, more than the column holds ({INT32_MAX:,})"
            )
            token_sum = None
        if cost_sum is not None and cost_sum >= COST_LIMIT:
            warnings.append(
                f"trace {trace_id}: cost_usd stored as NULL: its spans sum to "
                f"{cost_sum} USD, more than the column holds ({COST_LIMIT - Decimal('0.000001')})"
            )
            cost_sum = None
        names.append(trace_id)
        tokens.append(token_sum)
        costs.append(cost_sum)
    if names:
        cur.execute(
            _SET_TOTALS,
            {
                "ids": names,
                "tokens": tokens,
                "costs": costs,
                **window.params(),
                "mark": SPANS_MARK,
            },
        )
    return Totals(len(names), warnings)
