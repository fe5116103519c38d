from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from worker.otlp.mapping import MappedBatch

log = logging.getLogger("worker.otlp")

# A trace's totals are sums over its spans, which may arrive in several exports and in any
# order (children usually end, and so are exported, before their root). After each write the
# totals of every trace the request touched are recomputed from the stored spans, so they are
# right once the last span has arrived, whatever the order. Costs are those the writer filled in.
TOTALS_SQL = """
update observability.traces as t
set total_tokens = s.tokens, cost_usd = s.cost
from (
  select trace_id
       , least(
           sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0))
             filter (where input_tokens is not null or output_tokens is not null),
           2147483647)::integer as tokens
       , least(sum(cost_usd), 9999.999999)::numeric(10, 6) as cost
  from observability.spans
  where trace_id = any(%(trace_ids)s::text[])
  group by trace_id
) as s
where t.trace_id = s.trace_id
  and (t.total_tokens is distinct from s.tokens or t.cost_usd is distinct from s.cost)
"""

Item = tuple[str, dict[str, Any]]  # ("trace" | "span", row)


@dataclass(frozen=True)
class Refused:
    kind: str  # "trace" | "span"
    reason: str


def store(conn: psycopg.Connection[Any], batch: MappedBatch) -> list[Refused]:
    """Writes the batch; returns each item the writer or the database refused, with why.

    psycopg.OperationalError (the database is unreachable or went away) propagates: the caller
    answers 503 and the client retries the whole request, which is idempotent.
    """
    items: list[Item] = [("trace", t) for t in batch.traces] + [("span", s) for s in batch.spans]
    rejected = _write(conn, items)
    trace_ids = sorted({row["trace_id"] for _, row in items})
    if trace_ids:
        conn.execute(TOTALS_SQL, {"trace_ids": trace_ids})
        conn.commit()
    return rejected


def _write(conn: psycopg.Connection[Any], items: Sequence[Item]) -> list[Refused]:
    from worker.ingest import write_batch

    traces = [row for kind, row in items if kind == "trace"]
    spans = [row for kind, row in items if kind == "span"]
    try:
        result = write_batch(conn, traces=traces, spans=spans)
        conn.commit()
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
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
