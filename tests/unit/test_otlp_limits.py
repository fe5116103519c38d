from __future__ import annotations

import json
import uuid

from tests.otlp_encode import key_values, make_request, make_span, otlp_json
from worker.ingest import DEFAULT_LIMITS
from worker.otlp.attributes import MAX_ITEMS, MAX_STRING_CHARS
from worker.otlp.decode import JSON, decode_request
from worker.otlp.mapping import map_request

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
CHILD = "00f067aa0ba902b7"
START = 1_767_225_600_000_000_000


def test_each_warning_states_the_limit_that_was_applied() -> None:
    name_limit = DEFAULT_LIMITS.max_text_chars
    span = make_span(
        TRACE,
        ROOT,
        "n" * (name_limit + 1),
        START,
        START + 1,
        attributes={
            "prompt": "p" * (MAX_STRING_CHARS + 1),
            "other": "o" * (MAX_STRING_CHARS + 1),
            "gen_ai.operation.name": "o" * (name_limit + 1),
            "gen_ai.request.model": "m" * (DEFAULT_LIMITS.max_indexed_text_bytes + 1),
        },
    )
    warnings = map_request(make_request([span])).warnings
    assert sorted(warnings) == sorted(
        [
            f"2 string values cut to {name_limit} characters",
            f"2 string values cut to {MAX_STRING_CHARS} characters",
            "1 model, provider or session ids cut to fit their indexed columns"
            f" ({DEFAULT_LIMITS.max_indexed_text_bytes} bytes)",
        ]
    )


def test_the_attributes_size_warning_states_its_limit() -> None:
    big = {f"prompt.{i}": "p" * MAX_STRING_CHARS for i in range(6)}
    span = make_span(TRACE, CHILD, "chat", START, START + 1, parent_span_id=ROOT, attributes=big)
    [warning] = map_request(make_request([span])).warnings
    assert warning.endswith(f"({DEFAULT_LIMITS.max_json_bytes} bytes)")


GENAI = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 30,
    "gen_ai.server.time_to_first_token": 0.25,
    "user.id": "7d3c1a52-1b0e-4f9a-8a53-0e3f1f6c2b11",
    "gen_ai.conversation.id": "conv-42",
}


def test_genai_keys_past_the_attribute_limit_still_fill_their_columns() -> None:
    filler = {f"app.field.{i}": i for i in range(MAX_ITEMS + 500)}
    span = make_span(TRACE, ROOT, "chat gpt-4o", START, START + 1, attributes={**filler, **GENAI})
    resource = {**{f"host.tag.{i}": i for i in range(MAX_ITEMS)}, "session.id": "from-resource"}
    batch = map_request(make_request([span], resource=resource))
    [row], [trace] = batch.spans, batch.traces
    assert row["span_type"] == "llm" and row["operation_name"] == "chat"
    assert (row["provider"], row["model"]) == ("openai", "gpt-4o")
    assert (row["input_tokens"], row["output_tokens"]) == (120, 30)
    assert row["time_to_first_token_ms"] == 250
    assert trace["user_id"] == uuid.UUID(GENAI["user.id"])
    assert trace["session_id"] == "conv-42"
    # Only what is stored as attributes is cut: the first 1,024 as received.
    assert [k for k in row["attributes"] if k != "service.name"] == list(filler)[:MAX_ITEMS]
    assert f"2 attribute lists cut to {MAX_ITEMS} entries" in batch.warnings


def test_an_exception_event_past_the_attribute_limit_still_gives_the_error_type() -> None:
    span = make_span(TRACE, ROOT, "chat", START, START + 10, error="rate limited")
    event = span.events.add(name="exception", time_unix_nano=START + 5)
    filler = {f"x.{i}": i for i in range(MAX_ITEMS)}
    event.attributes.extend(key_values({**filler, "exception.type": "RateLimitError"}))
    [row] = map_request(make_request([span])).spans
    assert row["error_type"] == "RateLimitError"


def deep_json_value(levels: int) -> str:
    """An OTLP/JSON AnyValue of key-value lists nested levels deep, as text."""
    opening = '{"kvlistValue": {"values": [{"key": "k", "value": '
    return opening * levels + '{"stringValue": "leaf"}' + "}]}}" * levels


def with_raw(document: dict, raw: dict[str, str]) -> bytes:
    """document as JSON text, each "placeholder" string replaced by its raw JSON text."""
    text = json.dumps(document)
    for placeholder, value in raw.items():
        text = text.replace(f'"{placeholder}"', value)
    return text.encode()


def three_spans() -> list:
    return [
        make_span(TRACE, f"{i + 1:016x}", name, START, START + 1, parent_span_id=ROOT)
        for i, name in enumerate(["first", "deep", "last"])
    ]


def test_an_over_deep_json_attribute_refuses_only_its_span() -> None:
    document = otlp_json(make_request(three_spans()))
    deep = document["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    deep["attributes"] = [{"key": "deep", "value": "@DEEP@"}]
    decoded = decode_request(with_raw(document, {"@DEEP@": deep_json_value(2_000)}), JSON)
    stored = [s.name for s in decoded.request.resource_spans[0].scope_spans[0].spans]
    assert stored == ["first", "last"]
    [reason] = decoded.rejected
    assert reason.startswith("resource 0, scope 0, span 1: ") and "nested deeper" in reason
    batch = map_request(decoded)
    assert [s["name"] for s in batch.spans] == ["first", "last"] and len(batch.rejected) == 1


def test_an_over_deep_json_resource_refuses_its_spans_only() -> None:
    request = make_request(three_spans())
    request.resource_spans.append(make_request(three_spans()).resource_spans[0])
    document = otlp_json(request)
    document["resourceSpans"][1]["resource"] = {"attributes": [{"key": "deep", "value": "@DEEP@"}]}
    decoded = decode_request(with_raw(document, {"@DEEP@": deep_json_value(2_000)}), JSON)
    assert len(decoded.request.resource_spans[0].scope_spans[0].spans) == 3
    assert len(decoded.rejected) == 3
    assert all(r.startswith("resource 1") and "its resource" in r for r in decoded.rejected)
    assert "nested deeper" in decoded.rejected[0]


def test_moderately_deep_json_decodes_as_before() -> None:
    document = otlp_json(make_request(three_spans()))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["attributes"] = [
        {"key": "deep", "value": "@DEEP@"}
    ]
    decoded = decode_request(with_raw(document, {"@DEEP@": deep_json_value(20)}), JSON)
    assert decoded.rejected == []
    assert len(decoded.request.resource_spans[0].scope_spans[0].spans) == 3


def test_a_duration_past_int4_milliseconds_is_left_out() -> None:
    # The writer warns, naming each item (tests/integration/test_otlp_limits.py).
    thirty_days = 30 * 86_400 * 10**9
    root = make_span(TRACE, ROOT, "batch job", START, START + thirty_days)
    child = make_span(TRACE, CHILD, "step", START, START + thirty_days, parent_span_id=ROOT)
    short = make_span(TRACE, "1111111111111111", "short", START, START + 10**9, parent_span_id=ROOT)
    batch = map_request(make_request([root, child, short]))
    assert [s["duration_ms"] for s in batch.spans] == [None, None, 1000]
    assert all(s["ended_at"] is not None for s in batch.spans)
    assert batch.traces[0]["duration_ms"] is None
