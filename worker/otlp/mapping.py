from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from worker.ingest import DEFAULT_LIMITS as LIMITS
from worker.otlp import conventions as c
from worker.otlp.attributes import (
    Notes,
    any_value,
    attributes_dict,
    clean_text,
    fit,
    split_attributes,
)
from worker.otlp.decode import Decoded
from worker.otlp.events import map_events, map_links

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
CHUNK_SPANS = 2_000


class SpanRejected(ValueError):
    pass


@dataclass
class MappedBatch:
    """Rows for write_batch, a reason for each span that could not be mapped, and warnings."""

    traces: list[dict[str, Any]] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)
    # The events of the spans above (all of them: a span's stored events are replaced).
    span_events: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Origin:
    """What a span's resource and scope contribute to its rows."""

    resource: dict[str, Any]
    resource_chars: int
    scope: str


def map_request(decoded: Decoded | ExportTraceServiceRequest) -> MappedBatch:
    """The whole request as one batch."""
    return next(iter_batches(decoded, None))


def iter_batches(
    decoded: Decoded | ExportTraceServiceRequest, chunk_spans: int | None = CHUNK_SPANS
) -> Iterator[MappedBatch]:
    """The request mapped chunk_spans spans at a time (all at once for None), so that only one
    chunk's rows are held while it is written. The decoder's rejects come with the first batch,
    the warnings with the last; at least one batch is yielded."""
    if isinstance(decoded, ExportTraceServiceRequest):
        decoded = Decoded(decoded)
    batch = MappedBatch(rejected=list(decoded.rejected))
    notes = Notes()
    warnings: list[str] = []  # those that name a span
    spans: dict[tuple[str, str], dict[str, Any]] = {}
    events: dict[tuple[str, str], list[dict[str, Any]]] = {}
    traces: dict[tuple[str, datetime], dict[str, Any]] = {}
    for r, resource_spans in enumerate(decoded.request.resource_spans):
        before = notes.chars
        resource = attributes_dict(resource_spans.resource.attributes, notes)
        resource_chars = notes.chars - before
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            origin = Origin(resource, resource_chars, clean_text(scope_spans.scope.name, notes))
            for i, span in enumerate(scope_spans.spans):
                if chunk_spans is not None and len(spans) >= chunk_spans:
                    _fill(batch, spans, events, traces)
                    yield batch
                    batch, spans, events, traces = MappedBatch(), {}, {}, {}
                try:
                    row, trace = map_span(span, origin, notes, warnings)
                except SpanRejected as exc:
                    batch.rejected.append(f"resource {r}, scope {s}, span {i}: {exc}")
                    continue
                # A span delivered twice in one request is stored once (the last copy wins; in
                # a later chunk, by overwriting the row written with an earlier one), with the
                # events of that copy.
                identity = (row["trace_id"], row["span_id"])
                spans.pop(identity, None)
                spans[identity] = row
                events[identity] = map_events(span, *identity, notes, warnings)
                if trace is not None:
                    traces[(trace["trace_id"], trace["started_at"])] = trace
    _fill(batch, spans, events, traces)
    repaired = [
        f"{where}: bytes that were not UTF-8 in its events, links or trace state replaced by U+FFFD"
        for where in decoded.repaired
    ]
    batch.warnings = notes.warnings() + warnings + repaired
    yield batch


def _fill(
    batch: MappedBatch,
    spans: dict[tuple[str, str], dict[str, Any]],
    events: dict[tuple[str, str], list[dict[str, Any]]],
    traces: dict[tuple[str, datetime], dict[str, Any]],
) -> None:
    batch.spans = list(spans.values())
    batch.span_events = [event for identity in spans for event in events[identity]]
    batch.traces = list(traces.values())


def _time(nanos: int) -> datetime:
    return EPOCH + timedelta(microseconds=nanos // 1000)


def _ids(span: Span) -> tuple[str, str, str | None]:
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        raise SpanRejected(f"invalid trace_id {trace_id.hex()!r}: need 16 non-zero bytes")
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        raise SpanRejected(f"invalid span_id {span_id.hex()!r}: need 8 non-zero bytes")
    # An all-zero parent is how some exporters write "no parent".
    if not parent or parent == _ZERO_SPAN:
        return trace_id.hex(), span_id.hex(), None
    if len(parent) != 8:
        raise SpanRejected(f"invalid parent_span_id {parent.hex()!r}: need 8 bytes")
    if parent == span_id:
        raise SpanRejected("parent_span_id equals span_id")
    return trace_id.hex(), span_id.hex(), parent.hex()


def map_span(
    span: Span, origin: Origin, notes: Notes, warnings: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The spans row, and the traces row when the span is a root (has no parent). Warnings
    about one span (links dropped past the limit, say) are added to warnings."""
    trace_id, span_id, parent_span_id = _ids(span)
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if start == 0:
        raise SpanRejected("start_time_unix_nano is missing")
    if end and end < start:
        raise SpanRejected(f"ends before it starts ({end} < {start} ns)")
    name = clean_text(span.name, notes, LIMITS.max_text_chars)
    if not name.strip():
        raise SpanRejected("the span name is empty")
    started_at = _time(start)
    ended_at = _time(end) if end else None
    duration_ms = (end - start) // 1_000_000 if end else None
    if duration_ms is not None and duration_ms > c.INT4_MAX:
        # The column is int4: about 24.8 days. ended_at keeps the end, and the writer warns.
        duration_ms = None

    before = notes.chars
    attrs, past_limit = split_attributes(span.attributes, notes, c.SPAN_KEYS)
    chars = notes.chars - before
    taken = _Taker(attrs, notes, past_limit)
    operation = taken.text(c.OPERATION)
    kind = taken.text(c.SPAN_KIND)
    model = taken.indexed(c.MODEL)
    if model is not None and attrs.get("gen_ai.response.model") == model:
        attrs.pop("gen_ai.response.model")
    status, error_type, error_message = _status(span, taken, notes)
    kb = taken.uuid(c.DATA_SOURCE, c.KB_NAMESPACE)
    span_type = c.span_type(operation, kind, model is not None)
    row: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id,
        "started_at": started_at,
        "ended_at": ended_at,
        "duration_ms": duration_ms,
        "name": name,
        "span_type": span_type,
        "operation_name": operation,
        "status": status,
        "provider": taken.indexed(c.PROVIDER),
        "model": model,
        "input_tokens": taken.value(c.INPUT_TOKENS, c.count_value),
        "output_tokens": taken.value(c.OUTPUT_TOKENS, c.count_value),
        "time_to_first_token_ms": _time_to_first_token(span, taken),
        "cost_usd": None,
        "kb_id": kb,
        "documents_retrieved": None,
        "error_type": error_type,
        "error_message": error_message,
        "attributes": attrs,
        "links": map_links(span, trace_id, span_id, notes, [] if warnings is None else warnings),
    }
    # What the sender's SDK dropped past its own limits, which no stored row shows otherwise.
    for key, dropped in (
        ("otel.dropped_events_count", span.dropped_events_count),
        ("otel.dropped_links_count", span.dropped_links_count),
    ):
        if dropped:
            attrs[key] = dropped
            chars += len(key) + 24
    service = origin.resource.get("service.name")
    if service is not None:
        attrs.setdefault("service.name", service)
        chars += len(str(service)) + 16
    fit(attrs, LIMITS.max_json_bytes, notes, chars)
    if parent_span_id is not None:
        return row, None

    trace_attrs = dict(attrs)
    trace_taken = _Taker(trace_attrs, notes, past_limit, fallback=origin.resource)
    trace = {
        "trace_id": trace_id,
        "started_at": started_at,
        "ended_at": ended_at,
        "duration_ms": duration_ms,
        "name": name,
        "operation_type": c.operation_type(operation, span_type),
        "status": status,
        "user_id": trace_taken.uuid(c.USER, c.USER_NAMESPACE),
        "session_id": trace_taken.indexed(c.SESSION),
        "kb_id": kb,
        "total_tokens": None,  # summed from the stored spans after the write (see store.py)
        "cost_usd": None,
        "error_type": error_type,
        "error_message": error_message,
        "attributes": trace_attrs,
    }
    if origin.resource:
        trace_attrs["resource"] = origin.resource
    if origin.scope:
        trace_attrs["otel.scope.name"] = origin.scope
    chars += origin.resource_chars + len(origin.scope) + 32
    fit(trace_attrs, LIMITS.max_json_bytes, notes, chars)
    return row, trace


def _time_to_first_token(span: Span, taken: _Taker) -> int | None:
    """From the attribute when one is usable, else from the first stream chunk event."""
    ms = taken.value(c.TIME_TO_FIRST_TOKEN_S, c.seconds_to_ms)
    if ms is not None or not span.events:
        return ms
    chunks = (e.time_unix_nano for e in span.events if e.name in c.STREAM_CHUNK_EVENTS)
    return c.first_chunk_ms(span.start_time_unix_nano, chunks)


def _status(span: Span, taken: _Taker, notes: Notes) -> tuple[str, str | None, str | None]:
    error_type = taken.text(c.ERROR_TYPE)
    if span.status.code != Status.STATUS_CODE_ERROR:
        return ("ok" if span.end_time_unix_nano else "running"), error_type, None
    message = clean_text(span.status.message, notes, LIMITS.max_long_text_chars) or None
    for event in span.events:
        if event.name != "exception":
            continue
        # Only these two are read, wherever they are in the list: no attribute limit applies.
        details = {
            pair.key: any_value(pair.value, notes)
            for pair in event.attributes
            if pair.key in (c.EXCEPTION_TYPE, c.EXCEPTION_MESSAGE)
        }
        if error_type is None:
            error_type = taken.short(c.text_value(details.get(c.EXCEPTION_TYPE)))
        if message is None:
            message = c.text_value(details.get(c.EXCEPTION_MESSAGE))
        break
    return "error", error_type, message


class _Taker:
    """Reads an attribute into a column and removes it from the attributes it came from.

    A value that does not fit its column (a token count that is not a number, say) stays in
    the attributes. past_limit holds the mapped names found after the attribute limit: read
    like the others, never stored. With a fallback (the resource), a value found only there
    is copied, not removed.
    """

    def __init__(
        self,
        attrs: dict[str, Any],
        notes: Notes,
        past_limit: dict[str, Any] | None = None,
        fallback: dict[str, Any] | None = None,
    ) -> None:
        self.attrs = attrs
        self.notes = notes
        self.sources = (attrs, past_limit) if past_limit else (attrs,)
        self.fallback = fallback or {}

    def value(self, names: tuple[str, ...], convert: Any) -> Any:
        for name in names:
            for source in self.sources:
                if name in source:
                    converted = convert(source[name])
                    if converted is not None:
                        del source[name]
                        return converted
        for name in names:
            if name in self.fallback:
                converted = convert(self.fallback[name])
                if converted is not None:
                    return converted
        return None

    def text(self, names: tuple[str, ...]) -> str | None:
        return self.short(self.value(names, c.text_value))

    def short(self, value: str | None) -> str | None:
        """A text column holds at most the writer's max_text_chars."""
        if value is None or len(value) <= LIMITS.max_text_chars:
            return value
        return clean_text(value, self.notes, LIMITS.max_text_chars)

    def indexed(self, names: tuple[str, ...]) -> str | None:
        """A text column in a btree index holds at most the writer's max_indexed_text_bytes."""
        value = self.text(names)
        limit = LIMITS.max_indexed_text_bytes
        if value is None or len(value) <= limit // 4 or len(value.encode()) <= limit:
            return value
        self.notes.note("indexed", limit)
        return value.encode()[:limit].decode("utf-8", "ignore")

    def uuid(self, names: tuple[str, ...], namespace: Any) -> Any:
        # A UUID is moved into the column; any other id becomes a uuid5 of its text, and the
        # original stays in the attributes so that it can still be read.
        for sources in (self.sources, (self.fallback,)):
            for name in names:
                for source in sources:
                    if name not in source:
                        continue
                    converted = c.id_to_uuid(source[name], namespace)
                    if converted is None:
                        continue
                    value, was_uuid = converted
                    if was_uuid and source is not self.fallback:
                        del source[name]
                    return value
        return None
