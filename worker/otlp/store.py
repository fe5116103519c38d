from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from worker.ingest.errors import is_row_error
from worker.ingest.pricing import COST_SOURCE_KEY, COST_SOURCE_SPANS
from worker.otlp.mapping import MappedBatch

log = logging.getLogger("worker.otlp")

SPANS_MARK = json.dumps({COST_SOURCE_KEY: COST_SOURCE_SPANS})

# A trace's totals are sums over its spans, which may arrive in several exports and in any
# order (children usually end, and so are exported, before their root). After each write the
# totals of every trace the request touched are recomputed from the stored spans, so they are
# right once the last span has arrived, whatever the order. Costs are those the writer filled in;
# the mark tells recost that the trace cost is such a sum. Tokens are added as bigint: two int4
# counts near their maximum overflow int4.
TOTALS_SQL = """
update observability.traces as t
set total_tokens = s.tokens, cost_usd = s.cost, attributes = t.attributes || %(mark)s::jsonb
from (
  select trace_id
       , least(
           sum(coalesce(input_tokens, 0)::bigint + coalesce(output_tokens, 0)::bigint)
             filter (where input_tokens is not null or output_tokens is not null),
           2147483647)::integer as tokens
       , least(sum(cost_usd), 9999.999999)::numeric(10, 6) as cost
  from observability.spans
  where trace_id = any(%(trace_ids)s::text[])
  group by trace_id
) as s
where t.trace_id = s.trace_id
  and (t.total_tokens is distinct from s.tokens or t.cost_usd is distinct from s.cost
    or not t.attributes @> %(mark)s::jsonb)
"""

Item = tuple[str, dict[str, Any]]  # ("trace" | "span", row)


@dataclass(frozen=True)
class Refused:
    kind: str  # "trace" | "span"
    reason: str


def store(conn: psycopg.Connection[Any], batch: MappedBatch) -> list[Refused]:
    """Writes the batch and the totals of its traces; returns each item the writer or the
    database refused, with why.

    Errors that are not about one row propagate: the caller answers 503 when the database is
    unavailable (worker.ingest.errors.is_unavailable; the client retries the whole request,
    which is idempotent) and 500 otherwise.
    """
    refused = write(conn, batch)
    update_totals(conn, trace_ids(batch))
    return refused


def trace_ids(batch: MappedBatch) -> set[str]:
    return {row["trace_id"] for row in batch.spans} | {row["trace_id"] for row in batch.traces}


def update_totals(conn: psycopg.Connection[Any], ids: Iterable[str]) -> None:
    ordered = sorted(ids)
    if ordered:
        conn.execute(TOTALS_SQL, {"trace_ids": ordered, "mark": SPANS_MARK})
        conn.commit()


def write(conn: psycopg.Connection[Any], batch: MappedBatch) -> list[Refused]:
    items: list[Item] = [("trace", t) for t in batch.traces] + [("span", s) for s in batch.spans]
    return _write(conn, items) if items else []


def _write(conn: psycopg.Connection[Any], items: Sequence[Item]) -> list[Refused]:
    from worker.ingest import write_batch

    traces = [row for kind, row in items if kind == "trace"]
    spans = [row for kind, row in items if kind == "span"]
    try:
        result = write_batch(conn, traces=traces, spans=spans)
        conn.commit()
    except psycopg.Error as exc:
        if not is_row_error(exc):
            raise
        # The writer validates every item, so this is a row the database refuses for a reason
        # the writer does not know. Halving the batch until the row stands alone keeps every
        # valid sibling.
        conn.rollback()
        if len(items) == 1:
            kind, row = items[0]
            reason = exc.diag.message_primary or str(exc)
            log.warning("database refused %s: %s", _describe(kind, row), reason)
            return [Refused(kind, f"{_describe(kind, row)}: refused by the database: {reason}")]
        middle = len(items) // 2
        return _write(conn, items[:middle]) + _write(conn, items[middle:])
    by_kind = {"trace": traces, "span": spans}
    return [
        Refused(
            reject.kind,
            f"{_describe(reject.kind, by_kind[reject.kind][reject.index])}: {reject.reason}",
        )
        for reject in result.rejected
    ]


def _describe(kind: str, row: dict[str, Any]) -> str:
    if kind == "span":
        return f"span {row.get('trace_id')}/{row.get('span_id')}"
    return f"trace {row.get('trace_id')}"
