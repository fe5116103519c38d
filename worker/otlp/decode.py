from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from worker.otlp.json_span import fill_span
from worker.otlp.salvage import (
    MAX_JSON_DEPTH,
    holds,
    lenient_class,
    repair_resource,
    repair_scope,
    repair_span,
    replace_deep,
    scrub_resource,
    scrub_scope,
    scrub_span,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class MalformedPayload(ValueError):
    """The request as a whole cannot be decoded (HTTP 400, not retried)."""


@dataclass
class Decoded:
    """A request reduced to the spans that decode, and a reason for each span that does not."""

    request: ExportTraceServiceRequest
    rejected: list[str] = field(default_factory=list)
    # Where spans were kept by replacing bytes that were not UTF-8 in their events, links or
    # trace state with U+FFFD (events and links are stored: the mapper warns).
    repaired: list[str] = field(default_factory=list)


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
    lenient = lenient_class("opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest")()
    try:
        lenient.ParseFromString(body)
    except DecodeError as exc:
        raise MalformedPayload(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    decoded = Decoded(ExportTraceServiceRequest())
    for r, loose in enumerate(lenient.resource_spans):
        target = decoded.request.resource_spans.add(schema_url=_utf8(loose.schema_url))
        resource_error = (
            _reparse(loose.resource, target.resource, repair_resource)
            if loose.HasField("resource")
            else None
        )
        for s, loose_scope in enumerate(loose.scope_spans):
            scope_target = target.scope_spans.add(schema_url=_utf8(loose_scope.schema_url))
            scope_error = (
                _reparse(loose_scope.scope, scope_target.scope, repair_scope)
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
                error = _reparse(loose_span, span, repair_span, decoded.repaired, where)
                if error:
                    decoded.rejected.append(f"{where}: {error}")
                else:
                    scope_target.spans.append(span)
    return decoded


def _reparse(
    loose: Message,
    strict: Message,
    repair: Callable[[Any], bool],
    repaired: list[str] | None = None,
    where: str = "",
) -> str | None:
    error = _parse_strict(loose, strict)
    # Bytes that are not UTF-8 in fields that may be repaired are replaced, then tried again.
    if error and repair(loose):
        error = _parse_strict(loose, strict)
        if error is None and repaired is not None:
            repaired.append(where)
    return error


def _parse_strict(loose: Message, strict: Message) -> str | None:
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


# --- JSON ---------------------------------------------------------------------------------------

# OTLP/JSON differs from the canonical protobuf JSON mapping in its ids: hex, not base64.
_ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}
TOO_DEEP = f"cannot be decoded: nested deeper than {MAX_JSON_DEPTH} levels"


def decode_json(body: bytes) -> Decoded:
    if not body.strip():
        return Decoded(ExportTraceServiceRequest())
    # surrogateescape keeps a stray non-UTF-8 byte from failing the whole request. A lone
    # surrogate cannot become a protobuf string: in a stored field, the span holding it fails
    # alone below; elsewhere it is replaced by U+FFFD.
    text = body.decode("utf-8", "surrogateescape")
    marker = None
    try:
        document = json.loads(text)
    except RecursionError:
        # A NUL and a random part: no value sent can be mistaken for it.
        marker = f"\x00too deep {uuid.uuid4().hex}"
        try:
            document = json.loads(replace_deep(text, json.dumps(marker)))
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
        resource_error = _parse_part(
            resource_spans, ("resource",), target.resource, marker, scrub=scrub_resource
        )
        _parse_part(resource_spans, ("schemaUrl", "schema_url"), target, marker, "schema_url")
        for s, scope_spans in enumerate(_list(resource_spans, "scopeSpans", "scope_spans")):
            _require_object(scope_spans, f"resourceSpans[{r}].scopeSpans[{s}]")
            scope_target = target.scope_spans.add()
            scope_error = _parse_part(
                scope_spans, ("scope",), scope_target.scope, marker, scrub=scrub_scope
            )
            for i, raw_span in enumerate(_list(scope_spans, "spans")):
                where = f"resource {r}, scope {s}, span {i}"
                if resource_error or scope_error:
                    part = "resource" if resource_error else "scope"
                    decoded.rejected.append(f"{where}: its {part} {resource_error or scope_error}")
                    continue
                span = Span()
                error = (
                    TOO_DEEP
                    if holds(raw_span, marker)
                    else _parse_span(raw_span, span, decoded.repaired, where)
                )
                if error:
                    decoded.rejected.append(f"{where}: {error}")
                else:
                    scope_target.spans.append(span)
    return decoded


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
    scrub: Callable[[dict[str, Any]], bool] | None = None,
) -> str | None:
    value = next((container[n] for n in names if n in container), None)
    if value is None:
        return None
    if holds(value, marker):
        return TOO_DEEP
    if field is not None:
        return _parse_dict({field: value}, target)
    if not isinstance(value, dict):
        return f"cannot be decoded: must be a JSON object, got {type(value).__name__}"
    error = _parse_dict(value, target)
    if error and scrub is not None:
        value = dict(value)
        if _scrubbed(scrub, value):
            target.Clear()
            error = _parse_dict(value, target)
    return error


def _parse_span(raw: Any, span: Span, repaired: list[str], where: str) -> str | None:
    if not isinstance(raw, dict):
        return "a span must be a JSON object"
    raw = dict(raw)
    ids: dict[str, bytes] = {}
    for name, size in _ID_FIELDS.items():
        snake = _SNAKE[name]
        key = name if name in raw else snake if snake in raw else None
        if key is None:
            continue
        hex_id = raw.pop(key)
        if hex_id in (None, ""):
            continue
        try:
            ids[snake] = _hex_id(hex_id, size)
        except ValueError as exc:
            return f"{name} {exc}"
    if "links" in raw:
        # hex ids, like the span's own; a span with links takes json_format's way
        raw["links"] = _links(raw["links"])
    error = None if fill_span(raw, span) else _parse_dict(raw, span)
    if error and _scrubbed(scrub_span, raw):
        span.Clear()
        error = _parse_dict(raw, span)
        if error is None:
            repaired.append(where)
    if error:
        return error
    for snake, value in ids.items():
        setattr(span, snake, value)
    return None


def _links(links: Any) -> Any:
    """Links with their hex ids as the base64 that the protobuf JSON mapping reads. An id that
    is not hex becomes empty: the mapper drops that link with a warning, not the span."""
    if not isinstance(links, list):
        return links  # refused by the parser, with its reason
    converted = []
    for link in links:
        if isinstance(link, dict):
            link = dict(link)
            for name, size in (("traceId", 16), ("spanId", 8)):
                snake = _SNAKE[name]
                key = name if name in link else snake if snake in link else None
                if key is None:
                    continue
                try:
                    link[key] = base64.b64encode(_hex_id(link[key], size)).decode("ascii")
                except ValueError:
                    link[key] = ""
        converted.append(link)
    return converted


def _parse_dict(value: dict[str, Any], target: Message) -> str | None:
    try:
        json_format.ParseDict(value, target, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        return f"cannot be decoded: {_short(exc)}"
    return None


def _scrubbed(scrub: Callable[[dict[str, Any]], bool], raw: dict[str, Any]) -> bool:
    """Whether scrub replaced lone surrogates (bytes that were not UTF-8) in fields that are
    not stored, so that parsing again may succeed."""
    try:
        return scrub(raw)
    except RecursionError:
        return False


_SNAKE = {"traceId": "trace_id", "spanId": "span_id", "parentSpanId": "parent_span_id"}


def _hex_id(value: Any, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ValueError(f"must be {2 * size} hex digits, got {str(value)[:80]!r}")
    try:
        return binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {2 * size} hex digits, got {value[:80]!r}") from None
