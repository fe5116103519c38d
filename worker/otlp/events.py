from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from worker.ingest import DEFAULT_LIMITS as LIMITS
from worker.otlp.attributes import Notes, attributes_dict, clean_text, fit

# A span's events and links as the writer takes them (span_events rows, the spans.links array).
# Past the per-span limits (worker.ingest.Limits) the first ones are kept, and a warning names
# the span and how many were dropped: the same limits the writer holds bulk items to, so
# that what the endpoint passes on is never refused for its number.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
# W3C trace context: a tracestate header holds at most 512 characters.
MAX_TRACE_STATE_CHARS = 512


def map_events(
    span: Span, trace_id: str, span_id: str, notes: Notes, warnings: list[str]
) -> list[dict[str, Any]]:
    """The span's events as span_events items: the first max_events_per_span of them."""
    limit = LIMITS.max_events_per_span
    rows: list[dict[str, Any]] = []
    unnamed = 0
    for index, event in enumerate(span.events[:limit]):
        name = clean_text(event.name, notes, LIMITS.max_text_chars)
        if not name:
            unnamed += 1
            continue
        before = notes.chars
        attrs = attributes_dict(event.attributes, notes)
        fit(attrs, LIMITS.max_json_bytes, notes, notes.chars - before)
        rows.append(
            {
                "trace_id": trace_id,
                "span_id": span_id,
                "event_index": index,
                # 0 is "not set" in OTLP: stored as NULL, not as 1970.
                "occurred_at": _time(event.time_unix_nano) if event.time_unix_nano else None,
                "name": name,
                "attributes": attrs,
            }
        )
    where = f"span {trace_id}/{span_id}"
    total = len(span.events)
    if total > limit:
        warnings.append(
            f"{where}: {total - limit:,} of {total:,} events dropped "
            f"(at most {limit:,} stored per span)"
        )
    if unnamed:
        warnings.append(f"{where}: {unnamed:,} events without a name dropped")
    return rows


def map_links(
    span: Span, trace_id: str, span_id: str, notes: Notes, warnings: list[str]
) -> list[dict[str, Any]]:
    """The span's links as the spans.links array: the first max_links_per_span of them."""
    if not span.links:
        return []
    limit = LIMITS.max_links_per_span
    kept = span.links[:limit]
    # Half the attributes limit for all links' attributes, the rest for ids and trace states,
    # so that the array always fits the writer's max_json_bytes.
    budget = LIMITS.max_json_bytes // 2 // len(kept)
    links: list[dict[str, Any]] = []
    invalid = 0
    for link in kept:
        if not _valid_ids(link.trace_id, link.span_id):
            invalid += 1
            continue
        before = notes.chars
        attrs = attributes_dict(link.attributes, notes)
        fit(attrs, budget, notes, notes.chars - before)
        item: dict[str, Any] = {
            "trace_id": link.trace_id.hex(),
            "span_id": link.span_id.hex(),
            "attributes": attrs,
        }
        if link.trace_state:
            item["trace_state"] = clean_text(link.trace_state, notes, MAX_TRACE_STATE_CHARS)
        links.append(item)
    where = f"span {trace_id}/{span_id}"
    total = len(span.links)
    if total > limit:
        warnings.append(
            f"{where}: {total - limit:,} of {total:,} links dropped "
            f"(at most {limit:,} stored per span)"
        )
    if invalid:
        warnings.append(
            f"{where}: {invalid:,} links dropped: their trace_id or span_id is missing, "
            "of the wrong length or all zeros"
        )
    return links


def _valid_ids(trace_id: bytes, span_id: bytes) -> bool:
    valid_trace = len(trace_id) == 16 and trace_id != _ZERO_TRACE
    return valid_trace and len(span_id) == 8 and span_id != _ZERO_SPAN


def _time(nanos: int) -> datetime:
    return _EPOCH + timedelta(microseconds=nanos // 1000)
