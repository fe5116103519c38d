from __future__ import annotations

import uuid

from worker.ingest import DEFAULT_LIMITS
from worker.otlp.attributes import MAX_ITEMS, MAX_STRING_CHARS
from worker.otlp.encode import key_values, make_request, make_span
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
