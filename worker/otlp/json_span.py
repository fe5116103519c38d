from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# google.protobuf.json_format parses a span in pure Python, field by field through the
# descriptors: about 0.25 ms for a span with a dozen attributes, several times the rest of its
# way into the database. The OTLP/JSON that SDKs and collectors send has one shape, filled in
# here directly. Anything else (snake_case names, null, a number sent as a string of another
# form, base64 bytes, an unknown field or enum name, a string that is not UTF-8...) makes
# fill_span give up, and json_format parses that span as before, with its own error messages:
# what this accepts, json_format accepts the same way.

_UINT32 = 1 << 32
_UINT64 = 1 << 64
_INT64 = 1 << 63
_SPAN_KINDS = dict(Span.SpanKind.items())
_STATUS_CODES = dict(Status.StatusCode.items())


class _Unusual(Exception):
    pass


def fill_span(raw: dict[str, Any], span: Span) -> bool:
    """Fills the empty span from an OTLP/JSON span object without its ids and links; False,
    leaving the span empty, when its shape is unusual and json_format must decide."""
    try:
        for key, value in raw.items():
            _SPAN_FIELDS[key](span, value)
    except Exception:  # any surprise: json_format decides, as it did for every span before
        span.Clear()
        return False
    return True


def _string(value: Any) -> str:
    if type(value) is not str:
        raise _Unusual
    return value


def _unsigned(value: Any, bound: int) -> int:
    if type(value) is str and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is not int or not 0 <= value < bound:
        raise _Unusual
    return value


def _uint32(value: Any) -> int:
    return _unsigned(value, _UINT32)


def _uint64(value: Any) -> int:
    return _unsigned(value, _UINT64)


def _int64(value: Any) -> int:
    if type(value) is str:
        digits = value[1:] if value.startswith("-") else value
        if not (digits.isascii() and digits.isdigit()):
            raise _Unusual
        value = int(value)
    if type(value) is not int or not -_INT64 <= value < _INT64:
        raise _Unusual
    return value


def _enum(names: dict[str, int], value: Any) -> int:
    if type(value) is str:
        return names[value]
    if type(value) is not int or value not in names.values():
        raise _Unusual
    return value


def _fill_any(target: Any, raw: Any) -> None:
    if type(raw) is not dict or len(raw) > 1:
        raise _Unusual
    if not raw:
        target.SetInParent()
        return
    ((key, value),) = raw.items()
    if key == "stringValue":
        target.string_value = _string(value)
    elif key == "intValue":
        target.int_value = _int64(value)
    elif key == "doubleValue":
        # json_format refuses a bare NaN or Infinity (it wants them quoted).
        if type(value) is not int and not (type(value) is float and math.isfinite(value)):
            raise _Unusual
        target.double_value = value
    elif key == "boolValue":
        if type(value) is not bool:
            raise _Unusual
        target.bool_value = value
    elif key == "arrayValue":
        array = target.array_value
        array.SetInParent()
        for item in _values(value):
            _fill_any(array.values.add(), item)
    elif key == "kvlistValue":
        kvlist = target.kvlist_value
        kvlist.SetInParent()
        _fill_key_values(kvlist.values, _values(value))
    else:
        raise _Unusual


def _values(raw: Any) -> list[Any]:
    if type(raw) is not dict or (raw and (len(raw) > 1 or "values" not in raw)):
        raise _Unusual
    values = raw.get("values", [])
    if type(values) is not list:
        raise _Unusual
    return values


def _fill_key_values(container: Any, raw: Any) -> None:
    if type(raw) is not list:
        raise _Unusual
    add = container.add
    for item in raw:
        if type(item) is not dict:
            raise _Unusual
        pair = add()
        if len(item) == 2:
            pair.key = _string(item["key"])
            _fill_any(pair.value, item["value"])
        elif len(item) == 1 and "key" in item:
            pair.key = _string(item["key"])
        elif item:
            raise _Unusual


def _scalar(name: str, convert: Callable[[Any], Any]) -> Callable[[Message, Any], None]:
    def fill(target: Message, value: Any) -> None:
        setattr(target, name, convert(value))

    return fill


def _attributes(target: Any, value: Any) -> None:
    _fill_key_values(target.attributes, value)


def _events(span: Span, value: Any) -> None:
    if type(value) is not list:
        raise _Unusual
    for raw in value:
        if type(raw) is not dict:
            raise _Unusual
        event = span.events.add()
        for key, item in raw.items():
            _EVENT_FIELDS[key](event, item)


def _status(span: Span, value: Any) -> None:
    if type(value) is not dict:
        raise _Unusual
    status = span.status
    status.SetInParent()
    for key, item in value.items():
        if key == "message":
            status.message = _string(item)
        elif key == "code":
            status.code = _enum(_STATUS_CODES, item)
        else:
            raise _Unusual


_EVENT_FIELDS: dict[str, Callable[[Any, Any], None]] = {
    "timeUnixNano": _scalar("time_unix_nano", _uint64),
    "name": _scalar("name", _string),
    "attributes": _attributes,
    "droppedAttributesCount": _scalar("dropped_attributes_count", _uint32),
}
_SPAN_FIELDS: dict[str, Callable[[Any, Any], None]] = {
    "traceState": _scalar("trace_state", _string),
    "flags": _scalar("flags", _uint32),
    "name": _scalar("name", _string),
    "kind": _scalar("kind", lambda value: _enum(_SPAN_KINDS, value)),
    "startTimeUnixNano": _scalar("start_time_unix_nano", _uint64),
    "endTimeUnixNano": _scalar("end_time_unix_nano", _uint64),
    "attributes": _attributes,
    "droppedAttributesCount": _scalar("dropped_attributes_count", _uint32),
    "events": _events,
    "droppedEventsCount": _scalar("dropped_events_count", _uint32),
    "droppedLinksCount": _scalar("dropped_links_count", _uint32),
    "status": _status,
}
