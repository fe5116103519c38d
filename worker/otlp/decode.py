from __future__ import annotations

import binascii
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class MalformedPayload(ValueError):
    """The request as a whole cannot be decoded (HTTP 400, not retried)."""


@dataclass
class Decoded:
    """A request reduced to the spans that decode, and a reason for each span that does not."""

    request: ExportTraceServiceRequest
    rejected: list[str] = field(default_factory=list)


def decode_request(body: bytes, content_type: str) -> Decoded:
    if content_type == PROTOBUF:
        return decode_protobuf(body)
    if content_type == JSON:
        return decode_json(body)
    raise ValueError(f"unsupported content type {content_type!r}")


# --- protobuf -------------------------------------------------------------------------------------


def decode_protobuf(body: bytes) -> Decoded:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
        return Decoded(request)
    except DecodeError:
        pass
    # One bad span (a string that is not UTF-8, attributes nested past the decoder's depth limit)
    # fails the strict parse of the whole request. A lenient twin of the schema, whose strings
    # and attribute values are opaque bytes, splits the request into its spans, and each is then
    # decoded on its own, so only the bad ones are lost.
    lenient = _lenient_class("opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest")()
    try:
        lenient.ParseFromString(body)
    except DecodeError as exc:
        raise MalformedPayload(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    decoded = Decoded(ExportTraceServiceRequest())
    for r, loose in enumerate(lenient.resource_spans):
        target = decoded.request.resource_spans.add(schema_url=_utf8(loose.schema_url))
        resource_error = (
            _reparse(loose.resource, target.resource) if loose.HasField("resource") else None
        )
        for s, loose_scope in enumerate(loose.scope_spans):
            scope_target = target.scope_spans.add(schema_url=_utf8(loose_scope.schema_url))
            scope_error = (
                _reparse(loose_scope.scope, scope_target.scope)
                if loose_scope.HasField("scope")
                else None
            )
            for i, loose_span in enumerate(loose_scope.spans):
                where = f"resource {r}, scope {s}, span {i}"
                if resource_error or scope_error:
                    part = "resource" if resource_error else "scope"
                    decoded.rejected.append(f"{where}: its {part} {resource_error or scope_error}")
                    continue
                span = Span()
                error = _reparse(loose_span, span)
                if error:
                    decoded.rejected.append(f"{where}: {error}")
                else:
                    scope_target.spans.append(span)
    return decoded


def _reparse(loose: Message, strict: Message) -> str | None:
    try:
        strict.ParseFromString(loose.SerializeToString())
    except DecodeError as exc:
        return f"cannot be decoded: {_short(exc)}"
    return None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text.rsplit(": ", 1)[-1] if ": " in text else text


def _utf8(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


_SOURCES = (common_pb2, resource_pb2, trace_pb2, trace_service_pb2)


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
def _lenient_class(full_name: str) -> type[Message]:
    return message_factory.GetMessageClass(_lenient_pool().FindMessageTypeByName(full_name))


# --- JSON ---------------------------------------------------------------------------------------

# OTLP/JSON differs from the canonical protobuf JSON mapping in its ids: hex, not base64.
_ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


# json.loads recurses once per level of nesting and so fails the whole document on one value
# nested past Python's recursion limit. Only then is the text scanned again, and each array or
# object deeper than this replaced by a marker, so that only the span (or resource, or scope)
# holding it is refused. json_format refuses messages nested past 100 levels anyway (about 140
# levels of JSON below a span), so the marker costs no span that would be stored otherwise.
MAX_JSON_DEPTH = 256
TOO_DEEP = f"cannot be decoded: nested deeper than {MAX_JSON_DEPTH} levels"
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def decode_json(body: bytes) -> Decoded:
    if not body.strip():
        return Decoded(ExportTraceServiceRequest())
    # surrogateescape keeps a stray non-UTF-8 byte from failing the whole request; the span
    # holding it fails alone below, as a lone surrogate cannot become a protobuf string.
    text = body.decode("utf-8", "surrogateescape")
    marker = None
    try:
        document = json.loads(text)
    except RecursionError:
        # A NUL and a random part: no value sent can be mistaken for it.
        marker = f"\x00too deep {uuid.uuid4().hex}"
        try:
            document = json.loads(_replace_deep(text, json.dumps(marker)))
        except (ValueError, RecursionError) as exc:
            raise MalformedPayload(f"not valid JSON: {_short(exc)}") from None
    except ValueError as exc:
        raise MalformedPayload(f"not valid JSON: {_short(exc)}") from None
    if not isinstance(document, dict):
        raise MalformedPayload("an OTLP/JSON request must be a JSON object")
    decoded = Decoded(ExportTraceServiceRequest())
    for r, resource_spans in enumerate(_list(document, "resourceSpans", "resource_spans")):
        _require_object(resource_spans, f"resourceSpans[{r}]")
        target = decoded.request.resource_spans.add()
        resource_error = _parse_part(resource_spans, ("resource",), target.resource, marker)
        _parse_part(resource_spans, ("schemaUrl", "schema_url"), target, marker, "schema_url")
        for s, scope_spans in enumerate(_list(resource_spans, "scopeSpans", "scope_spans")):
            _require_object(scope_spans, f"resourceSpans[{r}].scopeSpans[{s}]")
            scope_target = target.scope_spans.add()
            scope_error = _parse_part(scope_spans, ("scope",), scope_target.scope, marker)
            for i, raw_span in enumerate(_list(scope_spans, "spans")):
                where = f"resource {r}, scope {s}, span {i}"
                if resource_error or scope_error:
                    part = "resource" if resource_error else "scope"
                    decoded.rejected.append(f"{where}: its {part} {resource_error or scope_error}")
                    continue
                span = Span()
                error = TOO_DEEP if _holds(raw_span, marker) else _parse_span(raw_span, span)
                if error:
                    decoded.rejected.append(f"{where}: {error}")
                else:
                    scope_target.spans.append(span)
    return decoded


def _replace_deep(text: str, marker: str) -> str:
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


def _holds(value: Any, marker: str | None) -> bool:
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


def _require_object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where} must be a JSON object, got {type(value).__name__}")


def _list(container: Any, *names: str) -> list[Any]:
    if not isinstance(container, dict):
        raise MalformedPayload(f"expected a JSON object holding {names[0]!r}")
    value = next((container[n] for n in names if n in container), None)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{names[0]!r} must be a JSON array")
    return value


def _parse_part(
    container: dict[str, Any],
    names: tuple[str, ...],
    target: Message,
    marker: str | None = None,
    field: str | None = None,
) -> str | None:
    value = next((container[n] for n in names if n in container), None)
    if value is None:
        return None
    if _holds(value, marker):
        return TOO_DEEP
    if field is None and not isinstance(value, dict):
        return f"cannot be decoded: must be a JSON object, got {type(value).__name__}"
    try:
        if field is not None:
            json_format.ParseDict({field: value}, target, ignore_unknown_fields=True)
        else:
            json_format.ParseDict(value, target, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        return f"cannot be decoded: {_short(exc)}"
    return None


def _parse_span(raw: Any, span: Span) -> str | None:
    if not isinstance(raw, dict):
        return "a span must be a JSON object"
    raw = dict(raw)
    for name, size in _ID_FIELDS.items():
        snake = _SNAKE[name]
        key = name if name in raw else snake if snake in raw else None
        if key is None:
            continue
        hex_id = raw.pop(key)
        if hex_id in (None, ""):
            continue
        try:
            setattr(span, snake, _hex_id(hex_id, size))
        except ValueError as exc:
            return f"{name} {exc}"
    raw.pop("links", None)  # links carry hex ids too and are not stored
    try:
        json_format.ParseDict(raw, span, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        return f"cannot be decoded: {_short(exc)}"
    return None


_SNAKE = {"traceId": "trace_id", "spanId": "span_id", "parentSpanId": "parent_span_id"}


def _hex_id(value: Any, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ValueError(f"must be {2 * size} hex digits, got {str(value)[:80]!r}")
    try:
        return binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {2 * size} hex digits, got {value[:80]!r}") from None
