from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, MutableSequence
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from worker.otlp import conventions as c

# What saves the good parts of a request that does not decode as a whole: a lenient twin of the
# protobuf schema that splits it into spans, the replacement of bytes that are not UTF-8 in the
# fields that are never stored (so that they do not cost the span), and, for OTLP/JSON, the
# replacement of values nested too deep to be read.
#
# Fields that make the span's row keep refusing their span: a name, an attribute, a status
# message, the type and message of an exception event, the scope name and the resource's
# attributes. Repaired: the fields that are not stored (the trace state, the scope version and
# attributes, the resource's entity refs) and the span's events and links, stored in rows and
# a column of their own, where a byte that is not UTF-8 becomes U+FFFD rather than costing the
# span with its columns (a bad event should not lose the LLM call it belongs to).

_SOURCES = (common_pb2, resource_pb2, trace_pb2, trace_service_pb2)
_EXCEPTION_KEYS = (c.EXCEPTION_TYPE, c.EXCEPTION_MESSAGE)


@cache
def _lenient_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    as_bytes = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    for module in _SOURCES:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for message in _all_messages(proto.message_type):
            for f in message.field:
                if f.type == string or (message.name == "KeyValue" and f.name == "value"):
                    f.type = as_bytes
                    f.ClearField("type_name")
        pool.Add(proto)
    return pool


def _all_messages(
    messages: Iterable[descriptor_pb2.DescriptorProto],
) -> Iterator[descriptor_pb2.DescriptorProto]:
    for message in messages:
        yield message
        yield from _all_messages(message.nested_type)


@cache
def lenient_class(full_name: str) -> type[Message]:
    """The message class of the lenient schema: strings, and attribute values, are bytes."""
    return message_factory.GetMessageClass(_lenient_pool().FindMessageTypeByName(full_name))


# --- protobuf: lenient messages, whose strings are bytes --------------------------------------


def _fixed(value: bytes) -> bytes | None:
    """value with its bytes that are not UTF-8 replaced by U+FFFD; None when it is UTF-8."""
    if value.isascii():
        return None
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace").encode()
    return None


def _fix_fields(message: Any, *names: str) -> bool:
    changed = False
    for name in names:
        value = getattr(message, name)
        if isinstance(value, bytes):
            fixed = _fixed(value)
            if fixed is not None:
                setattr(message, name, fixed)
                changed = True
        else:  # a repeated string
            changed |= _fix_list(value)
    return changed


def _fix_list(values: MutableSequence[bytes]) -> bool:
    changed = False
    for n, value in enumerate(values):
        fixed = _fixed(value)
        if fixed is not None:
            values[n] = fixed
            changed = True
    return changed


def _fix_pairs(pairs: Iterable[Any], keep: tuple[bytes, ...] = ()) -> bool:
    changed = False
    for pair in pairs:
        if pair.key in keep:
            continue
        changed |= _fix_fields(pair, "key")
        value = _fix_value(pair.value)
        if value is not None:
            pair.value = value
            changed = True
    return changed


def _fix_value(data: bytes) -> bytes | None:
    """A serialized AnyValue repaired, or None when it needs no repair (or cannot be read: the
    strict decoder then refuses it, as before)."""
    if data.isascii():
        return None
    value = lenient_class("opentelemetry.proto.common.v1.AnyValue")()
    try:
        value.ParseFromString(data)
    except DecodeError:
        return None
    return value.SerializeToString() if _fix_any(value) else None


def _fix_any(value: Any) -> bool:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return _fix_fields(value, "string_value")
    if kind == "array_value":
        changed = False
        for item in value.array_value.values:
            changed |= _fix_any(item)
        return changed
    if kind == "kvlist_value":
        return _fix_pairs(value.kvlist_value.values)
    return False


def repair_span(span: Any) -> bool:
    """Repairs the lenient span's fields that are not stored, its events (but the exception
    fields) and links; whether any needed it."""
    changed = _fix_fields(span, "trace_state")
    for event in span.events:
        changed |= _fix_fields(event, "name")
        keep = tuple(k.encode() for k in _EXCEPTION_KEYS) if event.name == b"exception" else ()
        changed |= _fix_pairs(event.attributes, keep)
    for link in span.links:
        changed |= _fix_fields(link, "trace_state")
        changed |= _fix_pairs(link.attributes)
    return changed


def repair_scope(scope: Any) -> bool:
    return _fix_fields(scope, "version") | _fix_pairs(scope.attributes)


def repair_resource(resource: Any) -> bool:
    changed = False
    for ref in resource.entity_refs:
        changed |= _fix_fields(ref, "schema_url", "type", "id_keys", "description_keys")
    return changed


# --- OTLP/JSON: decoded documents, where a byte that is not UTF-8 is a lone surrogate ---------

_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub(value: Any) -> tuple[Any, bool]:
    """value with lone surrogates in its strings replaced by U+FFFD, and whether any was."""
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value, False
        return _SURROGATE.sub("\ufffd", value), True
    if isinstance(value, list):
        pairs = [_scrub(item) for item in value]
        if any(changed for _, changed in pairs):
            return [item for item, _ in pairs], True
    elif isinstance(value, dict):
        scrubbed = {key: _scrub(item) for key, item in value.items()}
        if any(changed for _, changed in scrubbed.values()):
            return {key: item for key, (item, _) in scrubbed.items()}, True
    return value, False


def _scrub_keys(raw: dict[str, Any], *names: str) -> bool:
    changed = False
    for name in names:
        if name in raw:
            raw[name], scrubbed = _scrub(raw[name])
            changed |= scrubbed
    return changed


def scrub_span(raw: dict[str, Any]) -> bool:
    """Repairs the fields of an OTLP/JSON span that repair_span repairs in protobuf; whether
    any needed it."""
    changed = _scrub_keys(raw, "traceState", "trace_state")
    links = raw.get("links")
    if isinstance(links, list):
        for n, link in enumerate(links):
            if isinstance(link, dict):
                link = links[n] = dict(link)
                changed |= _scrub_keys(link, "traceState", "trace_state", "attributes")
    events = raw.get("events")
    if not isinstance(events, list):
        return changed
    for n, event in enumerate(events):
        if not isinstance(event, dict):
            continue
        event = events[n] = dict(event)
        changed |= _scrub_keys(event, "name")
        attributes = event.get("attributes")
        if event.get("name") != "exception" or not isinstance(attributes, list):
            changed |= _scrub_keys(event, "attributes")
            continue
        for i, pair in enumerate(attributes):
            if not (isinstance(pair, dict) and pair.get("key") in _EXCEPTION_KEYS):
                attributes[i], scrubbed = _scrub(pair)
                changed |= scrubbed
    return changed


def scrub_scope(raw: dict[str, Any]) -> bool:
    return _scrub_keys(raw, "version", "attributes")


def scrub_resource(raw: dict[str, Any]) -> bool:
    return _scrub_keys(raw, "entityRefs", "entity_refs")


# json.loads recurses once per level of nesting and so fails the whole document on one value
# nested past Python's recursion limit. Only then is the text scanned again, and each array or
# object deeper than this replaced by a marker, so that only the span (or resource, or scope)
# holding it is refused. json_format refuses messages nested past 100 levels anyway (about 140
# levels of JSON below a span), so the marker costs no span that would be stored otherwise.
MAX_JSON_DEPTH = 256
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def replace_deep(text: str, marker: str) -> str:
    """text with each array or object nested deeper than MAX_JSON_DEPTH replaced by marker."""
    pieces: list[str] = []
    depth = 0
    kept = 0  # text[:kept] is in pieces
    cut_from = -1
    for token in _TOKENS.finditer(text):
        char = token.group()
        if char[0] == '"':
            continue
        if char in "[{":
            depth += 1
            if depth == MAX_JSON_DEPTH + 1:
                cut_from = token.start()
        else:
            if depth == MAX_JSON_DEPTH + 1 and cut_from >= 0:
                pieces += [text[kept:cut_from], marker]
                kept, cut_from = token.end(), -1
            depth -= 1
    pieces.append(text[kept:])
    return "".join(pieces)


def holds(value: Any, marker: str | None) -> bool:
    if marker is None:
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if item == marker:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
