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
where s.trace_id = any(%(ids)s::text[]) and s.started_at >= %(horizon)s
  and s.parent_span_id is null
group by s.trace_id
"""
_STORED_TRACES = """
select {columns}
from observability.traces as t
where t.trace_id = any(%(ids)s::text[]) and t.started_at >= %(horizon)s
"""

# Sums over nothing stay NULL (unknown), never zero; tokens are added as bigint, as two int4
# counts near their maximum overflow int4.
_SUMS = """
select s.trace_id,
  pg_catalog.sum(coalesce(s.input_tokens, 0)::bigint + coalesce(s.output_tokens, 0)::bigint)
    filter (where s.input_tokens is not null or s.output_tokens is not null),
  pg_catalog.sum(s.cost_usd)
from observability.spans as s
where s.trace_id = any(%(ids)s::text[]) and s.started_at >= %(horizon)s
group by s.trace_id
"""
_SET_TOTALS = """
update observability.traces as t
set total_tokens = v.tokens, cost_usd = v.cost, attributes = t.attributes || %(mark)s::jsonb
from rows from (pg_catalog.unnest(%(ids)s::text[]), pg_catalog.unnest(%(tokens)s::integer[]),
  pg_catalog.unnest(%(costs)s::numeric[])) as v (trace_id, tokens, cost)
where t.trace_id = v.trace_id and t.started_at >= %(horizon)s
  and (t.total_tokens is distinct from v.tokens or t.cost_usd is distinct from v.cost
    or not t.attributes @> %(mark)s::jsonb)
"""
SPANS_MARK = json.dumps({COST_SOURCE_KEY: COST_SOURCE_SPANS})

_POS = {name: TRACE.position(name) for name in TRACE.column_names}


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
    cur: psycopg.Cursor[Any], rows: list[tuple[Any, ...]], horizon: datetime
) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Trace rows reported by root spans, merged with what is stored: the trace starts with its
    earliest root and ends with its latest; it failed if a root failed and runs while a root
    runs; its name, operation, user, session and knowledge base are those of its earliest root.
    Returns the rows to write and warnings."""
    ids = [row[_POS["trace_id"]] for row in rows]
    roots = {r[0]: r[1:] for r in cur.execute(_ROOTS, {"ids": ids, "horizon": horizon})}
    columns = ", ".join(
        f"t.{name}::text" if name == "attributes" else f"t.{name}" for name in TRACE.column_names
    )
    stored = {
        r[0]: r
        for r in cur.execute(
            _STORED_TRACES.format(columns=columns), {"ids": ids, "horizon": horizon}
        )
    }
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


def update_totals(cur: psycopg.Cursor[Any], trace_ids: Iterable[str], horizon: datetime) -> Totals:
    """Sum the stored spans' tokens and costs into their traces. A sum over no value stays NULL;
    a sum past its column's range is stored as NULL, with a warning naming the trace."""
    ids = sorted(set(trace_ids))
    if not ids:
        return Totals(0, [])
    names, tokens, costs, warnings = [], [], [], []
    for trace_id, token_sum, cost_sum in cur.execute(_SUMS, {"ids": ids, "horizon": horizon}):
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
                "horizon": horizon,
                "mark": SPANS_MARK,
            },
        )
    return Totals(len(names), warnings)
