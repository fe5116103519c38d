from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from worker import ingest
from worker.ingest.errors import is_row_error
from worker.ingest.time_policy import DEFAULT_MAX_FUTURE
from worker.otlp.mapping import MappedBatch

log = logging.getLogger("worker.otlp")

Item = tuple[str, dict[str, Any]]  # ("trace" | "span", row)


@dataclass(frozen=True)
class Refused:
    kind: str  # "trace" | "span" | "span_event"
    reason: str


@dataclass
class Stored:
    refused: list[Refused] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def store(
    conn: psycopg.Connection[Any], batch: MappedBatch, max_future: timedelta = DEFAULT_MAX_FUTURE
) -> Stored:
    """Writes the batch, with the totals of its traces summed from their stored spans (in the
    same transaction, so concurrent writers of one trace cannot leave them short); returns each
    item the writer or the database refused, with why, and the writer's warnings.

    Errors that are not about one row propagate: the caller answers 503 when the database is
    unavailable (worker.ingest.errors.is_unavailable; the client retries the whole request,
    which is idempotent) and 500 otherwise.
    """
    items: list[Item] = [("trace", t) for t in batch.traces] + [("span", s) for s in batch.spans]
    # A span's events travel with it, also when the batch is split below.
    events: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for event in batch.span_events:
        events.setdefault((event["trace_id"], event["span_id"]), []).append(event)
    stored = Stored()
    if items:
        _write(conn, items, events, stored, max_future)
    return stored


def _write(
    conn: psycopg.Connection[Any],
    items: Sequence[Item],
    events: dict[tuple[str, str], list[dict[str, Any]]],
    stored: Stored,
    max_future: timedelta,
) -> None:
    traces = [row for kind, row in items if kind == "trace"]
    spans = [row for kind, row in items if kind == "span"]
    span_events = [e for s in spans for e in events.get((s["trace_id"], s["span_id"]), ())]
    try:
        result = ingest.write_batch(
            conn,
            traces=traces,
            spans=spans,
            span_events=span_events,
            traces_from_spans=True,
            max_future=max_future,
        )
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
            stored.refused.append(
                Refused(kind, f"{_describe(kind, row)}: refused by the database: {reason}")
            )
            return
        middle = len(items) // 2
        _write(conn, items[:middle], events, stored, max_future)
        _write(conn, items[middle:], events, stored, max_future)
        return
    by_kind = {"trace": traces, "span": spans, "span_event": span_events}
    stored.refused += [
        Refused(
            reject.kind,
            f"{_describe(reject.kind, by_kind[reject.kind][reject.index])}: {reject.reason}",
        )
        for reject in result.rejected
    ]
    stored.warnings += result.warnings


def _describe(kind: str, row: dict[str, Any]) -> str:
    if kind == "span":
        return f"span {row.get('trace_id')}/{row.get('span_id')}"
    if kind == "span_event":
        span = f"{row.get('trace_id')}/{row.get('span_id')}"
        return f"event {row.get('event_index')} ({row.get('name')!r}) of span {span}"
    return f"trace {row.get('trace_id')}"
