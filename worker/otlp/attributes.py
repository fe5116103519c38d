from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# Limits that keep one span from turning into an unbounded jsonb document. Values past them are
# cut, not rejected: the span stays, and the response carries a warning (partial_success with
# zero rejected spans, as the OTLP specification allows).
MAX_STRING_CHARS = 16_384
MAX_ITEMS = 1_024  # attributes per span, elements per array, entries per key-value list
MAX_DEPTH = 8  # nested arrays and key-value lists below one attribute
TOO_DEEP = "[nested deeper than 8 levels]"
DROPPED = "[dropped: the attributes exceeded their size limit]"


_WARNINGS = {
    "truncated": "string values cut to {limit} characters",
    "items": "attribute lists cut to {limit} entries",
    "depth": "values nested deeper than {limit} levels replaced",
    "nul": "NUL characters replaced by U+FFFD",
    "non_finite": "NaN or infinite doubles stored as strings",
    "dropped": "attribute values dropped to fit the attributes size limit ({limit} bytes)",
    "indexed": "model, provider or session ids cut to fit their indexed columns ({limit} bytes)",
}


class Notes:
    """Counts the values that were cut, by kind and by the limit applied, for the warning in
    the response."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, int]] = Counter()
        self.chars = 0  # characters seen, for a cheap upper bound on a value's JSON size

    def note(self, kind: str, limit: int = 0) -> None:
        self.counts[kind, limit] += 1

    def warnings(self) -> list[str]:
        return [
            f"{count} {_WARNINGS[kind].format(limit=limit)}"
            for (kind, limit), count in sorted(self.counts.items())
        ]


def clean_text(value: str, notes: Notes, max_chars: int = MAX_STRING_CHARS) -> str:
    # PostgreSQL text and jsonb cannot hold U+0000.
    if "\x00" in value:
        notes.note("nul")
        value = value.replace("\x00", "\ufffd")
    if len(value) > max_chars:
        notes.note("truncated", max_chars)
        value = value[:max_chars]
    notes.chars += len(value) + 2
    return value


def json_size(value: Any) -> int:
    """Bytes of value as compact UTF-8 JSON, as the writer measures attributes."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def fit(attrs: dict[str, Any], budget: int, notes: Notes, chars: int) -> dict[str, Any]:
    """attrs with its largest values dropped until it is at most budget bytes as JSON.

    chars (Notes.chars counted while converting attrs) bounds the size cheaply: each counted
    character stands for at most six bytes of JSON, so a usual span is never serialized here.
    """
    if 6 * chars + 2 <= budget:
        return attrs
    total = json_size(attrs)
    if total <= budget:
        return attrs
    sizes = {key: json_size(value) for key, value in attrs.items()}
    marker = json_size(DROPPED)
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if sizes[key] <= marker:
            break
        attrs[key] = DROPPED
        notes.note("dropped", budget)
        total -= sizes[key] - marker
        if total <= budget:
            return attrs
    while attrs and total > budget:  # too many keys even with the large values dropped
        key, value = attrs.popitem()
        notes.note("dropped", budget)
        total -= json_size(key) + 1 + json_size(value) + (1 if attrs else 0)
    return attrs


def attributes_dict(pairs: Iterable[KeyValue], notes: Notes, depth: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {}
    chars = 0
    for n, pair in enumerate(pairs):
        if n == MAX_ITEMS:
            notes.note("items", MAX_ITEMS)
            break
        # The common cases inline (this loop is the mapper's hot spot); the rest in any_value.
        key = pair.key
        if "\x00" in key or len(key) > MAX_STRING_CHARS:
            key = clean_text(key, notes)
            chars -= len(key) + 2
        value = pair.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            if "\x00" in text or len(text) > MAX_STRING_CHARS:
                text = clean_text(text, notes)
                chars -= len(text) + 2
            result[key] = text
            chars += len(key) + len(text) + 4
        elif kind == "int_value":
            result[key] = value.int_value
            chars += len(key) + 27
        else:
            result[key] = any_value(value, notes, depth)
            chars += len(key) + 2
    notes.chars += chars
    return result


def split_attributes(
    pairs: Sequence[KeyValue], notes: Notes, wanted: Collection[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The attributes to store (the first MAX_ITEMS), and the wanted ones that come after them.

    Columns are read from both, so that a span with more attributes than the limit keeps its
    model and token counts; only what is stored as attributes is cut.
    """
    stored = attributes_dict(pairs, notes)
    past: dict[str, Any] = {}
    if len(pairs) > MAX_ITEMS:
        for pair in pairs[MAX_ITEMS:]:
            if pair.key in wanted and pair.key not in past:
                past[pair.key] = any_value(pair.value, notes)
    return stored, past


def any_value(value: AnyValue, notes: Notes, depth: int = 0) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return clean_text(value.string_value, notes)
    notes.chars += 25  # the longest int64 or double, with its comma
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        number = value.double_value
        if math.isfinite(number):
            return number
        notes.note("non_finite")  # JSON (and so jsonb) has no NaN or Infinity
        return str(number)
    if kind == "bytes_value":
        return clean_text(base64.b64encode(value.bytes_value).decode("ascii"), notes)
    if kind is None:
        return None
    if depth >= MAX_DEPTH:
        notes.note("depth", MAX_DEPTH)
        return TOO_DEEP
    if kind == "array_value":
        items = value.array_value.values
        if len(items) > MAX_ITEMS:
            notes.note("items", MAX_ITEMS)
        return [any_value(item, notes, depth + 1) for item in items[:MAX_ITEMS]]
    return attributes_dict(value.kvlist_value.values, notes, depth + 1)
