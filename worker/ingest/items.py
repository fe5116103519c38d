from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.ingest import validation as v
from worker.ingest.validation import MILLISECOND, Check, Invalid, Limits
from worker.models.observability import MESSAGE_ROLES, SPAN_TYPES, TRACE_STATUSES


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # the type the staging table and COPY use (jsonb travels as text)
    check: Check
    required: bool = False
    default: Any = None  # a value, or a callable making one

    @property
    def jsonb(self) -> bool:
        """Whether the value travels as JSON text into a jsonb column."""
        return self.check in (v.json_object, v.json_array, span_links)


@dataclass(frozen=True)
class Kind:
    """One kind of item: its table, its columns in table order, its upsert key (the primary
    key, which on a hypertable must hold the time column) and its identity (what makes two
    deliveries the same item; the key unless the time column may change between them)."""

    name: str  # as reported in Reject.kind
    table: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    finish: Callable[[dict[str, Any]], None] | None = None
    identity: tuple[str, ...] = ()
    time_column: str = ""
    column_names: tuple[str, ...] = field(init=False, compare=False)
    _checks: dict[str, Check] = field(init=False, repr=False, compare=False)
    _required: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _factories: tuple[tuple[str, Callable[[], Any]], ...] = field(
        init=False, repr=False, compare=False
    )
    _defaults: tuple[Any, ...] = field(init=False, repr=False, compare=False)
    _key_positions: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _identity_positions: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(c.name for c in self.columns)
        object.__setattr__(self, "column_names", names)
        object.__setattr__(self, "_checks", {c.name: c.check for c in self.columns})
        object.__setattr__(self, "_required", tuple(c.name for c in self.columns if c.required))
        factories = tuple((c.name, c.default) for c in self.columns if callable(c.default))
        object.__setattr__(self, "_factories", factories)
        defaults = tuple(None if callable(c.default) else c.default for c in self.columns)
        object.__setattr__(self, "_defaults", defaults)
        object.__setattr__(self, "_key_positions", tuple(names.index(k) for k in self.key))
        identity = self.identity or self.key
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "_identity_positions", tuple(names.index(k) for k in identity))

    @property
    def time_varies(self) -> bool:
        """Whether a re-delivery may move the item to another time (another primary key)."""
        return self.identity != self.key

    def key_of(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(row[i] for i in self._key_positions)

    def identity_of(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(row[i] for i in self._identity_positions)

    def position(self, column: str) -> int:
        return self.column_names.index(column)

    def validate(self, item: Any, limits: Limits) -> tuple[Any, ...]:
        """The item as a row in column order; raises Invalid with the reason."""
        if not isinstance(item, Mapping):
            raise Invalid(f"item must be a mapping of column names, got {type(item).__name__}")
        checks = self._checks
        if not checks.keys() >= item.keys():
            unknown = ", ".join(sorted(v.show(k) for k in item if k not in checks))
            raise Invalid(f"unknown field(s) {unknown}; known: {', '.join(self.column_names)}")
        values = {}
        for name, value in item.items():
            if value is not None:
                values[name] = checks[name](name, value, limits)
        for name in self._required:
            if name not in values:
                raise Invalid(f"{name} is required")
        for name, factory in self._factories:
            if name not in values:
                values[name] = factory()
        if self.finish is not None:
            self.finish(values)
        return tuple(map(values.get, self.column_names, self._defaults))


def _times(values: dict[str, Any], start: str, end: str) -> None:
    started, ended = values[start], values.get(end)
    if ended is not None and ended < started:
        raise Invalid(f"{end} ({ended.isoformat()}) is before {start} ({started.isoformat()})")


def _duration(values: dict[str, Any]) -> None:
    _times(values, "started_at", "ended_at")
    if values.get("duration_ms") is None and values.get("ended_at") is not None:
        duration = (values["ended_at"] - values["started_at"]) // MILLISECOND
        if duration <= v.INT32_MAX:
            values["duration_ms"] = duration


def _finish_span(values: dict[str, Any]) -> None:
    _duration(values)
    if values.get("parent_span_id") == values["span_id"]:
        raise Invalid("parent_span_id must differ from span_id")


def _now() -> datetime:
    return datetime.now(UTC)


def span_links(name: str, value: Any, limits: Limits) -> str:
    """OpenTelemetry span links: a list of {"trace_id", "span_id"[, "attributes"]
    [, "trace_state"]}, at most limits.max_links_per_span of them."""
    if not isinstance(value, list | tuple):
        raise Invalid(f"{name} must be a JSON array (list), got {type(value).__name__}")
    if len(value) > limits.max_links_per_span:
        raise Invalid(
            f"{name} holds {len(value):,} links, more than the {limits.max_links_per_span:,} "
            "stored per span"
        )
    for n, link in enumerate(value):
        where = f"{name}[{n}]"
        if not isinstance(link, Mapping):
            raise Invalid(f"{where} must be an object, got {type(link).__name__}")
        unknown = set(link) - {"trace_id", "span_id", "attributes", "trace_state"}
        if unknown:
            raise Invalid(f"{where} has unknown field(s) {', '.join(sorted(map(v.show, unknown)))}")
        v.trace_id(f"{where}.trace_id", link.get("trace_id"), limits)
        v.span_id(f"{where}.span_id", link.get("span_id"), limits)
        if not isinstance(link.get("attributes", {}), Mapping):
            raise Invalid(f"{where}.attributes must be an object")
        if "trace_state" in link:
            v.short_text(f"{where}.trace_state", link["trace_state"], limits)
    return v.json_array(name, [dict(link) for link in value], limits)


def _event_index(name: str, value: Any, limits: Limits) -> int:
    index = v.count32(name, value, limits)
    if index >= limits.max_events_per_span:
        raise Invalid(
            f"{name} {index:,} is past the {limits.max_events_per_span:,} events stored per span"
        )
    return index


_TRACE_ID = Column("trace_id", "text", v.trace_id, required=True)
_OPTIONAL_TRACE_ID = Column("trace_id", "text", v.trace_id)
_STATUS = Column("status", "text", v.one_of(TRACE_STATUSES), default="running")
_ATTRIBUTES = Column("attributes", "text", v.json_object, default="{}")

TRACE = Kind(
    "trace",
    "observability.traces",
    (
        _TRACE_ID,
        Column("started_at", "timestamptz", v.timestamp, required=True),
        Column("ended_at", "timestamptz", v.timestamp),
        Column("duration_ms", "int4", v.count32),
        Column("name", "text", v.short_text, required=True),
        Column("operation_type", "text", v.identifier, required=True),
        _STATUS,
        Column("user_id", "uuid", v.uuid_value),
        Column("session_id", "text", v.indexed_text),
        Column("kb_id", "uuid", v.uuid_value),
        Column("total_tokens", "int4", v.count32),
        Column("cost_usd", "numeric", v.cost),
        Column("error_type", "text", v.short_text),
        Column("error_message", "text", v.long_text),
        _ATTRIBUTES,
    ),
    key=("trace_id", "started_at"),
    finish=_duration,
    identity=("trace_id",),
    time_column="started_at",
)

SPAN = Kind(
    "span",
    "observability.spans",
    (
        _TRACE_ID,
        Column("span_id", "text", v.span_id, required=True),
        Column("parent_span_id", "text", v.span_id),
        Column("started_at", "timestamptz", v.timestamp, required=True),
        Column("ended_at", "timestamptz", v.timestamp),
        Column("duration_ms", "int4", v.count32),
        Column("name", "text", v.short_text, required=True),
        Column("span_type", "text", v.one_of(SPAN_TYPES), required=True),
        Column("operation_name", "text", v.short_text),
        _STATUS,
        Column("provider", "text", v.indexed_text),
        Column("model", "text", v.indexed_text),
        Column("input_tokens", "int4", v.count32),
        Column("output_tokens", "int4", v.count32),
        Column("time_to_first_token_ms", "int4", v.count32),
        Column("cost_usd", "numeric", v.cost),
        Column("kb_id", "uuid", v.uuid_value),
        Column("documents_retrieved", "int4", v.count32),
        Column("error_type", "text", v.short_text),
        Column("error_message", "text", v.long_text),
        _ATTRIBUTES,
        Column("links", "text", span_links, default="[]"),
    ),
    key=("trace_id", "span_id", "started_at"),
    finish=_finish_span,
    identity=("trace_id", "span_id"),
    time_column="started_at",
)

# The events of the spans of a batch. span_started_at is the start of the span, which the writer
# fills in from the batch's span row: an event is written with its span, and a span written with
# its events (write_batch's span_events) has exactly those afterwards.
SPAN_EVENT = Kind(
    "span_event",
    "observability.span_events",
    (
        _TRACE_ID,
        Column("span_id", "text", v.span_id, required=True),
        Column("span_started_at", "timestamptz", v.timestamp, required=True),
        Column("event_index", "int4", _event_index, required=True),
        Column("occurred_at", "timestamptz", v.timestamp),
        Column("name", "text", v.short_text, required=True),
        _ATTRIBUTES,
    ),
    key=("trace_id", "span_id", "span_started_at", "event_index"),
    time_column="span_started_at",
)

CHAT_MESSAGE = Kind(
    "chat_message",
    "observability.chat_messages",
    (
        Column("id", "uuid", v.uuid_value, default=uuid.uuid4),
        Column("created_at", "timestamptz", v.timestamp, default=_now),
        Column("session_id", "text", v.indexed_text, required=True),
        _OPTIONAL_TRACE_ID,
        Column("user_id", "uuid", v.uuid_value),
        Column("kb_id", "uuid", v.uuid_value),
        Column("role", "text", v.one_of(MESSAGE_ROLES), required=True),
        Column("content", "text", v.long_text, required=True),
        Column("model", "text", v.short_text),
        Column("token_count", "int4", v.count32),
        Column("latency_ms", "int4", v.count32),
        Column("sources", "text", v.json_array, default="[]"),
        Column("citations", "text", v.json_array, default="[]"),
        _ATTRIBUTES,
    ),
    key=("id", "created_at"),
    time_column="created_at",
)

DOCUMENT_EVENT = Kind(
    "document_event",
    "observability.document_events",
    (
        Column("id", "uuid", v.uuid_value, default=uuid.uuid4),
        Column("created_at", "timestamptz", v.timestamp, default=_now),
        Column("document_id", "uuid", v.uuid_value, required=True),
        Column("kb_id", "uuid", v.uuid_value),
        _OPTIONAL_TRACE_ID,
        Column("event_type", "text", v.identifier, required=True),
        Column("status", "text", v.one_of(TRACE_STATUSES), required=True),
        Column("duration_ms", "int4", v.count32),
        Column("chunks_count", "int4", v.count32),
        Column("token_count", "int4", v.count32),
        Column("file_size_bytes", "int8", v.count64),
        Column("error_message", "text", v.long_text),
        _ATTRIBUTES,
    ),
    key=("id", "created_at"),
    time_column="created_at",
)

KINDS = (TRACE, SPAN, SPAN_EVENT, CHAT_MESSAGE, DOCUMENT_EVENT)
_COLUMNS_BY_KIND = {kind.name: {c.name: c for c in kind.columns} for kind in KINDS}
