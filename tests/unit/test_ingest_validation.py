from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from worker.ingest import DEFAULT_LIMITS, Limits
from worker.ingest.items import CHAT_MESSAGE, DOCUMENT_EVENT, SPAN, TRACE, Kind
from worker.ingest.validation import Invalid

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def span(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "started_at": START,
        "ended_at": START + timedelta(milliseconds=1500),
        "name": "chat gpt-4o",
        "span_type": "llm",
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 100,
        "output_tokens": 20,
        "attributes": {"gen_ai.operation.name": "chat"},
    }
    item.update(changes)
    return item


def row_of(kind: Kind, item: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    return dict(zip(kind.column_names, kind.validate(item, limits), strict=True))


def reason(kind: Kind, item: Any, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(Invalid) as caught:
        kind.validate(item, limits)
    return str(caught.value)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


def test_a_valid_span_becomes_a_row_with_defaults_and_a_duration() -> None:
    row = row_of(SPAN, span())
    assert row["status"] == "running"
    assert row["duration_ms"] == 1500
    assert row["cost_usd"] is None
    assert row["attributes"] == '{"gen_ai.operation.name":"chat"}'


def test_iso_strings_and_uuid_strings_are_accepted() -> None:
    kb = uuid.uuid4()
    row = row_of(SPAN, span(started_at="2026-01-05T12:00:00Z", ended_at=None, kb_id=str(kb)))
    assert row["started_at"] == START
    assert row["kb_id"] == kb
    assert row["duration_ms"] is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"trace_id": "XYZ"}, "trace_id must be 32 lowercase hex digits, got 'XYZ'"),
        ({"trace_id": "0AF7651916CD43DD8448EB211C80319C"}, "trace_id must be 32 lowercase hex"),
        ({"trace_id": "0" * 32}, "trace_id must not be all zeros"),
        ({"trace_id": 12}, "trace_id must be 32 lowercase hex digits, got 12"),
        ({"span_id": "xyz"}, "span_id must be 16 lowercase hex digits, got 'xyz'"),
        ({"span_id": "0" * 16}, "span_id must not be all zeros"),
        ({"parent_span_id": "b7ad6b7169203331"}, "parent_span_id must differ from span_id"),
        ({"parent_span_id": "b7ad6b71"}, "parent_span_id must be 16 lowercase hex digits"),
        ({"span_id": None}, "span_id is required"),
        ({"started_at": "yesterday"}, "started_at must be an ISO 8601 time, got 'yesterday'"),
        ({"started_at": datetime(2026, 1, 5)}, "started_at must carry a time zone"),
        ({"started_at": 1_700_000_000}, "started_at must be a datetime, got int"),
        ({"ended_at": START - timedelta(seconds=1)}, "ended_at (2026-01-05T11:59:59+00:00) is"),
        ({"duration_ms": -5}, "duration_ms must not be negative, got -5"),
        ({"duration_ms": 2**31}, "duration_ms is larger than 2,147,483,647"),
        ({"duration_ms": 1.5}, "duration_ms must be an integer, got float"),
        ({"duration_ms": True}, "duration_ms must be an integer, got bool"),
        ({"input_tokens": -1}, "input_tokens must not be negative"),
        ({"span_type": "llm_call"}, "span_type must be one of llm, embedding, retrieval"),
        ({"status": "OK"}, "status must be one of running, ok, error; got 'OK'"),
        ({"name": ""}, "name must not be empty"),
        ({"name": "chat\x00"}, "name contains a NUL character"),
        ({"name": b"\xff\xfe"}, "name must be text (str), got bytes"),
        ({"name": "bad \udcff surrogate"}, "name is not valid UTF-8 (surrogates not allowed"),
        ({"model": "m" * 5000}, "model is 5,000 characters long, more than 4,096"),
        ({"cost_usd": -0.01}, "cost_usd must not be negative"),
        ({"cost_usd": "NaN"}, "cost_usd must be a finite number"),
        ({"cost_usd": "cheap"}, "cost_usd must be a number, got 'cheap'"),
        ({"cost_usd": 10_000}, "cost_usd must be below 10000 USD"),
        ({"cost_usd": "9999.9999995"}, "cost_usd must be below 10000 USD"),
        ({"model": "m" * 1001}, "model is 1,001 bytes as UTF-8, more than 1,000 (the column is"),
        ({"provider": "\u00e9" * 600}, "provider is 1,200 bytes as UTF-8, more than 1,000"),
        ({"kb_id": "not-a-uuid"}, "kb_id must be a UUID, got 'not-a-uuid'"),
        ({"attributes": ["a"]}, "attributes must be a JSON object (dict), got list"),
        ({"attributes": {"k": "v\x00"}}, "attributes contains a NUL character"),
        ({"attributes": {"k\x00": 1}}, "attributes contains a NUL character"),
        ({"attributes": {"k": "\udcff"}}, "attributes holds text that is not valid UTF-8"),
        ({"attributes": {"k": float("nan")}}, "attributes cannot be stored as JSON"),
        ({"attributes": {"k": {1, 2}}}, "attributes cannot be stored as JSON"),
        ({"attributes": {"k": "x" * 70_000}}, "attributes is 70,008 bytes as JSON, more than"),
        ({"attributes": nested(17)}, "attributes is nested deeper than 16 levels"),
        ({"attributes": nested(100_000)}, "attributes is nested deeper than 16 levels"),
        ({"colour": "blue"}, "unknown field(s) 'colour'; known: trace_id, span_id"),
    ],
)
def test_bad_spans_are_refused_with_their_reason(changes: dict[str, Any], expected: str) -> None:
    assert expected in reason(SPAN, span(**changes))


def test_a_cyclic_attribute_value_is_refused_not_looped_over() -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    assert reason(SPAN, span(attributes=cycle)) == "attributes refers to itself (a cycle)"


def test_a_backslash_u0000_text_is_not_mistaken_for_a_nul() -> None:
    row = row_of(SPAN, span(attributes={"path": "C:\\u0000"}))
    assert row["attributes"] == '{"path":"C:\\\\u0000"}'


def test_a_non_mapping_item_is_refused() -> None:
    assert reason(SPAN, ["not", "a", "dict"]) == (
        "item must be a mapping of column names, got list"
    )


def test_long_reasons_show_a_shortened_value() -> None:
    text = reason(SPAN, span(trace_id="z" * 10_000))
    assert len(text) < 200
    assert text.endswith("...")


def test_limits_are_configurable() -> None:
    short = span(name="chat", model="gpt-4o")
    assert "more than 5" in reason(SPAN, short, Limits(max_text_chars=5))
    assert "more than 20" in reason(
        SPAN, span(attributes={"k": "v" * 30}), Limits(max_json_bytes=20)
    )
    assert "deeper than 2" in reason(SPAN, span(attributes=nested(3)), Limits(max_json_depth=2))
    assert row_of(SPAN, span(attributes=nested(3)))["attributes"].startswith('{"child"')


def test_long_text_columns_take_long_text() -> None:
    row = row_of(SPAN, span(error_message="e" * 100_000))
    assert len(row["error_message"]) == 100_000
    assert "more than 1,048,576" in reason(SPAN, span(error_message="e" * 1_048_577))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("0.001234"), Decimal("0.001234")),
        (0.5, Decimal("0.5")),
        ("2", Decimal(2)),
        # Rounded half away from zero to micro-dollars, as numeric(10, 6) stores it.
        ("0.0000005", Decimal("0.000001")),
        ("9999.9999994", Decimal("9999.999999")),
    ],
)
def test_costs_become_decimals(value: Any, expected: Decimal) -> None:
    assert row_of(SPAN, span(cost_usd=value))["cost_usd"] == expected


TRACE_ITEM = {
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
    "started_at": START,
    "name": "chat turn",
    "operation_type": "chat",
}


@pytest.mark.parametrize(
    ("kind", "item", "expected"),
    [
        (TRACE, {**TRACE_ITEM, "operation_type": "Chat Turn"}, "operation_type must be a lower"),
        (TRACE, {**TRACE_ITEM, "session_id": ""}, "session_id must not be empty"),
        (TRACE, {**TRACE_ITEM, "session_id": "s" * 1001}, "session_id is 1,001 bytes"),
        (TRACE, {**TRACE_ITEM, "operation_type": "o" * 1001}, "operation_type is 1,001 bytes"),
        (
            CHAT_MESSAGE,
            {"session_id": "s" * 1001, "role": "user", "content": "hi"},
            "session_id is 1,001 bytes",
        ),
        (
            DOCUMENT_EVENT,
            {"document_id": str(uuid.uuid4()), "event_type": "e" * 1001, "status": "ok"},
            "event_type is 1,001 bytes",
        ),
        (TRACE, {**TRACE_ITEM, "total_tokens": -3}, "total_tokens must not be negative"),
        (TRACE, {**TRACE_ITEM, "name": None}, "name is required"),
        (CHAT_MESSAGE, {"session_id": "s", "role": "bot", "content": "hi"}, "role must be one"),
        (CHAT_MESSAGE, {"session_id": "s", "role": "user"}, "content is required"),
        (
            CHAT_MESSAGE,
            {"session_id": "s", "role": "user", "content": "hi", "sources": {"a": 1}},
            "sources must be a JSON array (list), got dict",
        ),
        (
            DOCUMENT_EVENT,
            {"document_id": str(uuid.uuid4()), "event_type": "parse", "status": "done"},
            "status must be one of running, ok, error",
        ),
        (
            DOCUMENT_EVENT,
            {
                "document_id": str(uuid.uuid4()),
                "event_type": "parse",
                "status": "ok",
                "file_size_bytes": 2**63,
            },
            "file_size_bytes is larger than",
        ),
    ],
)
def test_bad_items_of_other_kinds_are_refused(kind: Kind, item: Any, expected: str) -> None:
    assert expected in reason(kind, item)


@pytest.mark.parametrize(
    ("kind", "item"),
    [
        (CHAT_MESSAGE, {"session_id": "s", "role": "user", "content": "hi"}),
        (DOCUMENT_EVENT, {"document_id": str(uuid.uuid4()), "event_type": "x", "status": "ok"}),
    ],
)
def test_messages_and_events_get_an_id_and_a_time_when_they_have_none(
    kind: Kind, item: dict[str, Any]
) -> None:
    before = datetime.now(UTC)
    row = row_of(kind, item)
    assert isinstance(row["id"], uuid.UUID)
    assert before <= row["created_at"] <= datetime.now(UTC)
    assert row["attributes"] == "{}"


def test_a_trace_gets_its_duration_from_its_end() -> None:
    item = {**TRACE_ITEM, "ended_at": START + timedelta(seconds=2)}
    assert row_of(TRACE, item)["duration_ms"] == 2000
    assert "ended_at" in reason(TRACE, {**TRACE_ITEM, "ended_at": START - timedelta(days=1)})


@pytest.mark.parametrize("check", [SPAN.validate, TRACE.validate])
def test_the_input_item_is_left_unchanged(check: Callable[[Any, Limits], Any]) -> None:
    item = span() if check == SPAN.validate else dict(TRACE_ITEM)
    copy = dict(item)
    check(item, DEFAULT_LIMITS)
    assert item == copy
