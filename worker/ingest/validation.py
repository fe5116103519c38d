from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# numeric(10, 6): at most 9999.999999.
COST_LIMIT = Decimal(10_000)
MICRO = Decimal("0.000001")
MILLISECOND = timedelta(milliseconds=1)
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Limits:
    """Size limits applied to every item; pass your own to write_batch to change them."""

    max_text_chars: int = 4096  # names, models, ids and other short text
    # Text in a btree index (model, provider, session ids, operation and event types, also in
    # the rollups' dimension_value): PostgreSQL refuses index entries over about 2,700 bytes.
    max_indexed_text_bytes: int = 1000
    max_long_text_chars: int = 1_048_576  # chat content, error messages
    max_json_bytes: int = 65_536  # attributes, sources, citations, serialized as JSON
    max_json_depth: int = 16  # {"a": 1} is depth 1, {"a": {"b": 1}} depth 2
    # OpenTelemetry SDKs keep 128 of each by default; streamed responses may record an event per
    # chunk, so events get twice that.
    max_events_per_span: int = 256
    max_links_per_span: int = 128


DEFAULT_LIMITS = Limits()


class Invalid(ValueError):
    """One item breaks a rule; the message is the reason reported for it."""


def show(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."


# --- one value each --------------------------------------------------------------------------

Check = Callable[[str, Any, Limits], Any]


def _text(name: str, value: Any, max_chars: int) -> str:
    if type(value) is not str:
        if isinstance(value, bytes | bytearray):
            raise Invalid(f"{name} must be text (str), got bytes {show(value)}")
        raise Invalid(f"{name} must be text, got {type(value).__name__} {show(value)}")
    if len(value) > max_chars:
        raise Invalid(f"{name} is {len(value):,} characters long, more than {max_chars:,}")
    if "\x00" in value:
        raise Invalid(f"{name} contains a NUL character, which PostgreSQL text cannot hold")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise Invalid(f"{name} is not valid UTF-8 ({exc.reason} at {exc.start})") from None
    return value


def short_text(name: str, value: Any, limits: Limits) -> str:
    text = _text(name, value, limits.max_text_chars)
    if not text:
        raise Invalid(f"{name} must not be empty")
    return text


def indexed_text(name: str, value: Any, limits: Limits) -> str:
    text = short_text(name, value, limits)
    size = len(text) if text.isascii() else len(text.encode())
    if size > limits.max_indexed_text_bytes:
        raise Invalid(
            f"{name} is {size:,} bytes as UTF-8, more than {limits.max_indexed_text_bytes:,} "
            "(the column is indexed)"
        )
    return text


def long_text(name: str, value: Any, limits: Limits) -> str:
    return _text(name, value, limits.max_long_text_chars)


def _hex_id(pattern: re.Pattern[str], digits: int) -> Check:
    def check(name: str, value: Any, limits: Limits) -> str:
        if type(value) is not str or not pattern.fullmatch(value):
            raise Invalid(f"{name} must be {digits} lowercase hex digits, got {show(value)}")
        if value == "0" * digits:
            raise Invalid(f"{name} must not be all zeros")
        return value

    return check


trace_id = _hex_id(_TRACE_ID, 32)
span_id = _hex_id(_SPAN_ID, 16)


def identifier(name: str, value: Any, limits: Limits) -> str:
    text = indexed_text(name, value, limits)
    if not _IDENTIFIER.fullmatch(text):
        raise Invalid(f"{name} must be a lowercase identifier ([a-z][a-z0-9_]*), got {show(value)}")
    return text


def one_of(choices: tuple[str, ...]) -> Check:
    def check(name: str, value: Any, limits: Limits) -> str:
        if value not in choices or type(value) is not str:
            raise Invalid(f"{name} must be one of {', '.join(choices)}; got {show(value)}")
        return value

    return check


def timestamp(name: str, value: Any, limits: Limits) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid(f"{name} must be an ISO 8601 time, got {show(value)}") from None
    elif not isinstance(value, datetime):
        raise Invalid(f"{name} must be a datetime, got {type(value).__name__} {show(value)}")
    if value.utcoffset() is None:
        raise Invalid(f"{name} must carry a time zone (UTC offset), got {show(value)}")
    return value


def _integer(name: str, value: Any, maximum: int) -> int:
    if type(value) is not int:
        raise Invalid(f"{name} must be an integer, got {type(value).__name__} {show(value)}")
    if value < 0:
        raise Invalid(f"{name} must not be negative, got {value}")
    if value > maximum:
        raise Invalid(f"{name} is larger than {maximum:,}: {value:,}")
    return value


def count32(name: str, value: Any, limits: Limits) -> int:
    return _integer(name, value, INT32_MAX)


def count64(name: str, value: Any, limits: Limits) -> int:
    return _integer(name, value, INT64_MAX)


def cost(name: str, value: Any, limits: Limits) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise Invalid(f"{name} must be a number, got {type(value).__name__} {show(value)}")
    try:
        amount = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise Invalid(f"{name} must be a number, got {show(value)}") from None
    if not amount.is_finite():
        raise Invalid(f"{name} must be a finite number, got {show(value)}")
    if amount < 0:
        raise Invalid(f"{name} must not be negative, got {amount}")
    # Rounded as numeric(10, 6) stores it (half away from zero), so that a value which rounds up
    # to 10000 is refused here rather than by the database for the whole batch.
    rounded = amount.quantize(MICRO, rounding=ROUND_HALF_UP) if amount < COST_LIMIT else amount
    if rounded >= COST_LIMIT:
        raise Invalid(f"{name} must be below {COST_LIMIT} USD (numeric(10, 6)), got {amount}")
    return rounded


def uuid_value(name: str, value: Any, limits: Limits) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise Invalid(f"{name} must be a UUID, got {show(value)}")


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_CONTAINERS = (dict, list, tuple)


def _json(name: str, value: Any, limits: Limits) -> str:
    """value serialized as JSON text that jsonb accepts."""
    try:
        text = _ENCODER.encode(value)
    except RecursionError:
        raise Invalid(f"{name} is nested deeper than {limits.max_json_depth} levels") from None
    except (TypeError, ValueError) as exc:
        if "Circular reference" in str(exc):
            raise Invalid(f"{name} refers to itself (a cycle)") from None
        raise Invalid(f"{name} cannot be stored as JSON: {exc}") from None
    # Nesting is at most the number of brackets, so most values need no walk.
    if text.count("{") + text.count("[") > limits.max_json_depth:
        _check_depth(name, value, limits.max_json_depth)
    size = len(text) if text.isascii() else len(_utf8(name, text))
    if size > limits.max_json_bytes:
        raise Invalid(f"{name} is {size:,} bytes as JSON, more than {limits.max_json_bytes:,}")
    if "\\u0000" in text and _holds_nul(value):
        raise Invalid(f"{name} contains a NUL character, which jsonb cannot hold")
    return text


def _check_depth(name: str, value: Any, max_depth: int) -> None:
    level = [value]
    for _ in range(max_depth):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if isinstance(child, _CONTAINERS)
        ]
        if not level:
            return
    raise Invalid(f"{name} is nested deeper than {max_depth} levels")


def _utf8(name: str, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise Invalid(f"{name} holds text that is not valid UTF-8 ({exc.reason})") from None


def _holds_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return False


def json_object(name: str, value: Any, limits: Limits) -> str:
    if not isinstance(value, Mapping):
        raise Invalid(f"{name} must be a JSON object (dict), got {type(value).__name__}")
    return _json(name, dict(value) if not isinstance(value, dict) else value, limits)


def json_array(name: str, value: Any, limits: Limits) -> str:
    if not isinstance(value, list | tuple):
        raise Invalid(f"{name} must be a JSON array (list), got {type(value).__name__}")
    return _json(name, value, limits)
