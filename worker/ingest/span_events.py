from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from worker.ingest.items import SPAN, SPAN_EVENT
from worker.ingest.traces import Window
from worker.ingest.validation import Invalid, Limits

# The stored events of the batch's spans, looked up span by span through the primary key (the
# staged spans have no statistics; OFFSET 0 keeps the lookup from being planned as a join over
# every stored event), in the chunks where the batch's traces have rows.
_STORED = """
select b.trace_id, b.span_id, o.span_started_at, o.event_index
from pg_temp.{stage} as b
cross join lateral (
  select e.span_started_at, e.event_index from observability.span_events as e
  where e.trace_id = b.trace_id and e.span_id = b.span_id
    and e.span_started_at >= %(first)s and e.span_started_at <= %(last)s
  offset 0
) as o
where b.trace_id = any(%(known)s::text[])
"""
_DELETE = """
delete from observability.span_events as e
using rows from (pg_catalog.unnest(%(trace_ids)s::text[]), pg_catalog.unnest(%(span_ids)s::text[]),
  pg_catalog.unnest(%(starts)s::timestamptz[]), pg_catalog.unnest(%(indexes)s::int4[]))
  as m (trace_id, span_id, span_started_at, event_index)
where e.trace_id = m.trace_id and e.span_id = m.span_id
  and e.span_started_at = m.span_started_at and e.event_index = m.event_index
  and e.span_started_at >= %(first)s and e.span_started_at <= %(last)s
"""


def validate_events(
    items: Sequence[Mapping[str, Any]],
    spans: Sequence[tuple[Any, ...]],
    limits: Limits,
) -> tuple[list[tuple[Any, ...]], list[tuple[int, str]]]:
    """The events whose span is among the batch's valid spans, as rows, each with the start of
    its span, and (position, reason) for each other one. A later event with the same span and
    index replaces an earlier one."""
    trace_at, span_at, start_at = (SPAN.position(c) for c in ("trace_id", "span_id", "started_at"))
    starts = {(row[trace_at], row[span_at]): row[start_at] for row in spans}
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    rejected: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise Invalid(f"item must be a mapping of column names, got {type(item).__name__}")
            if "span_started_at" in item:
                raise Invalid("span_started_at is the start of the event's span: leave it out")
            started = starts.get((item.get("trace_id"), item.get("span_id")))
            if started is None:
                raise Invalid(
                    f"its span {item.get('trace_id')}/{item.get('span_id')} is not among the "
                    "batch's valid spans (an event is written with its span)"
                )
            row = SPAN_EVENT.validate({**item, "span_started_at": started}, limits)
        except Invalid as exc:
            rejected.append((index, str(exc)))
            continue
        key = SPAN_EVENT.key_of(row)
        rows.pop(key, None)
        rows[key] = row
    return list(rows.values()), rejected


def delete_replaced(
    cur: psycopg.Cursor[Any],
    span_stage: sql.Identifier,
    rows: Sequence[tuple[Any, ...]],
    stored: Window,
    known: list[str],
) -> int:
    """Remove the stored events of the staged spans that the batch does not hold again (a span
    re-sent with fewer events, or with another start); returns how many. Only the spans of
    known traces (with rows stored in the window) are looked up."""
    window = stored.params()
    statement = sql.SQL(_STORED).format(stage=span_stage)
    found = cur.execute(statement, {"known": known, **window}).fetchall()
    if not found:
        return 0
    kept = {SPAN_EVENT.key_of(row) for row in rows}
    gone = [key for key in found if tuple(key) not in kept]
    if not gone:
        return 0
    trace_ids, span_ids, starts, indexes = (list(column) for column in zip(*gone, strict=True))
    params = {
        "trace_ids": trace_ids,
        "span_ids": span_ids,
        "starts": starts,
        "indexes": indexes,
        **window,
    }
    cur.execute(_DELETE, params)
    return cur.rowcount
