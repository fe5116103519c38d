from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from tests.otlp_encode import make_request, make_span
from worker.otlp import conventions
from worker.otlp.attributes import MAX_DEPTH, MAX_ITEMS, MAX_STRING_CHARS, TOO_DEEP
from worker.otlp.mapping import map_request

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
CHILD = "00f067aa0ba902b7"
START = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
KB = "6f1c2b9e-3a57-4c0e-9d51-8f0a2b3c4d5e"

GENAI = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 30,
    "gen_ai.server.time_to_first_token": 0.25,
    "gen_ai.request.temperature": 0.2,
}


def one(attributes: dict, **kwargs):
    kwargs.setdefault("parent_span_id", ROOT)
    span = make_span(TRACE, CHILD, "chat gpt-4o", START, START + 1_500_000_000, **kwargs,
                     attributes=attributes)  # fmt: skip
    batch = map_request(make_request([span], resource={"service.name": "rag-api"}))
    assert batch.rejected == []
    return batch


def test_genai_span_maps_every_column() -> None:
    batch = one(GENAI)
    [row] = batch.spans
    assert batch.traces == []  # not a root span
    assert row["trace_id"] == TRACE and row["span_id"] == CHILD and row["parent_span_id"] == ROOT
    assert row["started_at"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert row["ended_at"] == datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert row["duration_ms"] == 1500
    assert row["span_type"] == "llm" and row["operation_name"] == "chat"
    assert (row["provider"], row["model"]) == ("openai", "gpt-4o")
    assert (row["input_tokens"], row["output_tokens"]) == (120, 30)
    assert row["time_to_first_token_ms"] == 250
    assert row["status"] == "ok" and row["cost_usd"] is None
    # Mapped keys leave the attributes; the rest (and the differing response model) stay.
    assert row["attributes"] == {
        "gen_ai.request.temperature": 0.2,
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "service.name": "rag-api",
    }


def test_root_span_becomes_a_trace_row() -> None:
    attributes = {
        **GENAI,
        "user.id": "7d3c1a52-1b0e-4f9a-8a53-0e3f1f6c2b11",
        "gen_ai.conversation.id": "conv-42",
        "gen_ai.data_source.id": KB,
    }
    batch = one(attributes, parent_span_id=None)
    [trace] = batch.traces
    [span] = batch.spans
    assert span["parent_span_id"] is None
    assert trace["trace_id"] == TRACE and trace["name"] == "chat gpt-4o"
    assert trace["operation_type"] == "chat" and trace["status"] == "ok"
    assert trace["user_id"] == uuid.UUID("7d3c1a52-1b0e-4f9a-8a53-0e3f1f6c2b11")
    assert trace["session_id"] == "conv-42"
    assert trace["kb_id"] == span["kb_id"] == uuid.UUID(KB)
    assert (
        "user.id" not in trace["attributes"] and "gen_ai.conversation.id" not in trace["attributes"]
    )
    assert trace["attributes"]["resource"] == {"service.name": "rag-api"}
    assert trace["attributes"]["otel.scope.name"] == "worker.otlp"


def test_non_uuid_ids_become_uuid5_and_keep_the_original() -> None:
    batch = one({"enduser.id": "alice@example.com", "gen_ai.data_source.id": "kb-docs"},
                parent_span_id=None)  # fmt: skip
    [trace] = batch.traces
    assert trace["user_id"] == uuid.uuid5(conventions.USER_NAMESPACE, "alice@example.com")
    assert trace["kb_id"] == uuid.uuid5(conventions.KB_NAMESPACE, "kb-docs")
    assert trace["attributes"]["enduser.id"] == "alice@example.com"
    assert batch.spans[0]["attributes"]["gen_ai.data_source.id"] == "kb-docs"


def test_session_and_user_fall_back_to_resource_attributes() -> None:
    span = make_span(TRACE, ROOT, "turn", START, START + 1)
    request = make_request([span], resource={"session.id": "s-1", "user.id": "bob"})
    [trace] = map_request(request).traces
    assert trace["session_id"] == "s-1"
    assert trace["user_id"] == uuid.uuid5(conventions.USER_NAMESPACE, "bob")


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"gen_ai.operation.name": "embeddings"}, "embedding"),
        ({"gen_ai.operation.name": "execute_tool"}, "tool"),
        ({"gen_ai.operation.name": "invoke_agent"}, "agent"),
        ({"gen_ai.operation.name": "create_agent"}, "agent"),
        ({"gen_ai.operation.name": "text_completion"}, "llm"),
        ({"gen_ai.operation.name": "generate_content"}, "llm"),
        ({"gen_ai.operation.name": "retrieval"}, "retrieval"),
        ({"gen_ai.operation.name": "rerank"}, "rerank"),
        ({"openinference.span.kind": "RETRIEVER"}, "retrieval"),
        ({"openinference.span.kind": "RERANKER"}, "rerank"),
        ({"openinference.span.kind": "CHAIN"}, "chain"),
        ({"traceloop.span.kind": "workflow"}, "chain"),
        ({"llm.request.type": "chat"}, "llm"),
        ({"llm.model_name": "claude-3-haiku"}, "llm"),
        ({"gen_ai.operation.name": "something_new"}, "other"),
        ({}, "other"),
    ],
)
def test_span_types(attributes: dict, expected: str) -> None:
    assert one(attributes).spans[0]["span_type"] == expected


def test_openinference_and_older_names() -> None:
    [row] = one(
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "claude-3-haiku",
            "llm.provider": "anthropic",
            "llm.token_count.prompt": 11,
            "llm.token_count.completion": "7",
        }
    ).spans
    assert (row["model"], row["provider"]) == ("claude-3-haiku", "anthropic")
    assert (row["input_tokens"], row["output_tokens"]) == (11, 7)
    [row] = one(
        {
            "gen_ai.system": "openai",
            "gen_ai.usage.prompt_tokens": 5,
            "gen_ai.usage.completion_tokens": 6,
        }  # fmt: skip
    ).spans
    assert (row["provider"], row["input_tokens"], row["output_tokens"]) == ("openai", 5, 6)


def test_unusable_values_stay_in_attributes() -> None:
    [row] = one({"gen_ai.usage.input_tokens": -3, "gen_ai.usage.output_tokens": "many",
                 "gen_ai.request.model": 42}).spans  # fmt: skip
    assert row["input_tokens"] is None and row["output_tokens"] is None and row["model"] is None
    assert row["attributes"]["gen_ai.usage.input_tokens"] == -3
    assert row["attributes"]["gen_ai.usage.output_tokens"] == "many"


def test_error_status_and_exception_event() -> None:
    span = make_span(TRACE, ROOT, "chat", START, START + 10, error="rate limited")
    event = span.events.add(name="exception", time_unix_nano=START + 5)
    from tests.otlp_encode import key_values

    event.attributes.extend(key_values({"exception.type": "RateLimitError"}))
    batch = map_request(make_request([span]))
    [row], [trace] = batch.spans, batch.traces
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "error", "RateLimitError", "rate limited"
    )  # fmt: skip
    assert (trace["status"], trace["error_type"]) == ("error", "RateLimitError")


def test_open_span_is_running() -> None:
    batch = map_request(make_request([make_span(TRACE, ROOT, "chat", START, 0)]))
    assert batch.spans[0]["status"] == "running" and batch.spans[0]["ended_at"] is None


@pytest.mark.parametrize(
    ("trace_id", "span_id", "parent", "start", "end", "name", "reason"),
    [
        ("0" * 32, ROOT, None, START, START + 1, "x", "invalid trace_id"),
        (TRACE, "0" * 16, None, START, START + 1, "x", "invalid span_id"),
        ("ab" * 8, ROOT, None, START, START + 1, "x", "invalid trace_id"),
        (TRACE, ROOT, ROOT, START, START + 1, "x", "parent_span_id equals span_id"),
        (TRACE, ROOT, "abcd", START, START + 1, "x", "invalid parent_span_id"),
        (TRACE, ROOT, None, START, START - 1, "x", "ends before it starts"),
        (TRACE, ROOT, None, 0, START, "x", "start_time_unix_nano is missing"),
        (TRACE, ROOT, None, START, START + 1, " ", "name is empty"),
    ],
)
def test_unmappable_span_is_rejected_and_siblings_kept(
    trace_id: str, span_id: str, parent: str | None, start: int, end: int, name: str, reason: str
) -> None:
    bad = make_span(trace_id, span_id, name, start, end, parent_span_id=parent)
    good = make_span(TRACE, CHILD, "sibling", START, START + 1, parent_span_id=ROOT)
    batch = map_request(make_request([bad, good]))
    assert [s["span_id"] for s in batch.spans] == [CHILD]
    assert len(batch.rejected) == 1 and reason in batch.rejected[0]
    assert batch.rejected[0].startswith("resource 0, scope 0, span 0")


def test_duplicate_span_in_one_request_is_kept_once() -> None:
    span = make_span(TRACE, ROOT, "chat", START, START + 1)
    batch = map_request(make_request([span, span]))
    assert len(batch.spans) == 1 and len(batch.traces) == 1


def test_gigantic_deep_and_odd_values_are_cut_with_warnings() -> None:
    deep: object = "leaf"
    for _ in range(MAX_DEPTH + 3):
        deep = {"k": deep}
    [row] = one(
        {
            "big": "x" * (MAX_STRING_CHARS + 10),
            "deep": deep,
            "many": list(range(MAX_ITEMS + 5)),
            "nul": "a\x00b",
            "nan": float("nan"),
            "blob": b"\x00\xff",
        }
    ).spans
    attrs = row["attributes"]
    assert len(attrs["big"]) == MAX_STRING_CHARS
    level = attrs["deep"]
    for _ in range(MAX_DEPTH):
        level = level["k"]
    assert level == TOO_DEEP
    assert len(attrs["many"]) == MAX_ITEMS
    assert attrs["nul"] == "a\ufffdb" and attrs["nan"] == "nan" and attrs["blob"] == "AP8="
    batch = one({"big": "x" * (MAX_STRING_CHARS + 1)})
    assert batch.warnings == [f"1 string values cut to {MAX_STRING_CHARS} characters"]


def test_huge_duration_keeps_end_but_not_duration() -> None:
    end = START + 40 * 86_400 * 10**9
    [row] = map_request(make_request([make_span(TRACE, ROOT, "long", START, end)])).spans
    assert row["duration_ms"] is None and row["ended_at"] is not None


@pytest.mark.parametrize(
    ("operation", "expected"),
    [("chat", "chat"), ("Chat Completion", "chat_completion"), ("2-step", "step"), ("!!", "llm")],
)
def test_operation_type_is_an_identifier(operation: str, expected: str) -> None:
    assert conventions.operation_type(operation, "llm") == expected


def test_attributes_are_fitted_to_the_writer_limit() -> None:
    from worker.ingest import DEFAULT_LIMITS
    from worker.otlp.attributes import DROPPED, json_size

    big = {f"prompt.{i}": "p" * MAX_STRING_CHARS for i in range(6)}
    batch = one({**big, "gen_ai.request.model": "m", "small": 1}, parent_span_id=None)
    [row], [trace] = batch.spans, batch.traces
    for attrs in (row["attributes"], trace["attributes"]):
        assert json_size(attrs) <= DEFAULT_LIMITS.max_json_bytes
        assert attrs["small"] == 1 and DROPPED in attrs.values()
    assert row["model"] == "m"
    assert any("dropped to fit" in w for w in batch.warnings)


def test_long_names_are_cut_to_the_writer_limit() -> None:
    from worker.ingest import DEFAULT_LIMITS

    span = make_span(TRACE, ROOT, "n" * 10_000, START, START + 1,
                     attributes={"gen_ai.request.model": "m" * 10_000})  # fmt: skip
    [row] = map_request(make_request([span])).spans
    assert len(row["name"]) == DEFAULT_LIMITS.max_text_chars
    assert len(row["model"]) == DEFAULT_LIMITS.max_indexed_text_bytes


def test_indexed_columns_are_cut_to_whole_utf8_characters_with_a_warning() -> None:
    attributes = {
        "gen_ai.request.model": "\u00e9" * 3000,  # two bytes each
        "gen_ai.provider.name": "p" * 5000,
        "session.id": "\u20ac" * 2000,  # three bytes each
    }
    span = make_span(TRACE, ROOT, "chat", START, START + 1, attributes=attributes)
    batch = map_request(make_request([span]))
    [row], [trace] = batch.spans, batch.traces
    assert row["model"] == "\u00e9" * 500 and row["provider"] == "p" * 1000
    assert trace["session_id"] == "\u20ac" * 333
    assert any("cut to fit their indexed columns" in w for w in batch.warnings)


@pytest.mark.parametrize("count", ["\u00b2", "\u0663", "12\u00b2", " 7 ", "1_000"])
def test_token_counts_that_int_refuses_stay_in_attributes(count: str) -> None:
    # "\u00b2".isdigit() is true, but int() refuses it: it used to fail the whole request.
    [row] = one({"gen_ai.usage.input_tokens": count}).spans
    if count.strip().isascii() and count.strip().isdigit():
        assert row["input_tokens"] == int(count)
    else:
        assert row["input_tokens"] is None
        assert row["attributes"]["gen_ai.usage.input_tokens"] == count


def test_a_request_is_mapped_in_chunks() -> None:
    from worker.otlp.mapping import iter_batches

    spans = [make_span(TRACE, f"{n:016x}", f"s{n}", START, START + 1) for n in range(1, 6)]
    spans.insert(2, make_span(TRACE, "0" * 16, "bad", START, START + 1))
    spans.append(make_span(TRACE, f"{9:016x}", "x" * 20_000, START, START + 1))
    batches = list(iter_batches(make_request(spans), 2))
    assert [len(b.spans) for b in batches] == [2, 2, 2]
    assert [len(b.rejected) for b in batches] == [0, 1, 0]
    assert [bool(b.warnings) for b in batches] == [False, False, True]
    assert [len(map_request(make_request(spans)).spans)] == [6]


def test_events_and_links_are_mapped_with_their_span() -> None:
    span = make_span(TRACE, CHILD, "execute_tool search", START, START + 10**9, parent_span_id=ROOT)
    tool = span.events.add(name="gen_ai.tool.message", time_unix_nano=START + 5_000)
    tool.attributes.add(key="gen_ai.tool.name").value.string_value = "search"
    span.events.add(name="", time_unix_nano=START + 6_000)  # no name: dropped
    span.events.add(name="no time")
    link = span.links.add(trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
                          span_id=bytes.fromhex(ROOT), trace_state="vendor=1")  # fmt: skip
    link.attributes.add(key="why").value.string_value = "fan-in"
    span.links.add(trace_id=bytes(16), span_id=bytes.fromhex(ROOT))  # all-zero trace: dropped
    batch = map_request(make_request([span]))
    assert [(e["event_index"], e["name"]) for e in batch.span_events] == [
        (0, "gen_ai.tool.message"),
        (2, "no time"),
    ]
    first, second = batch.span_events
    assert first["occurred_at"] == datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC)
    assert first["attributes"] == {"gen_ai.tool.name": "search"}
    assert second["occurred_at"] is None and second["span_id"] == CHILD
    [row] = batch.spans
    assert row["links"] == [
        {
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": ROOT,
            "attributes": {"why": "fan-in"},
            "trace_state": "vendor=1",
        }
    ]
    where = f"span {TRACE}/{CHILD}"
    assert f"{where}: 1 events without a name dropped" in batch.warnings
    assert any(w.startswith(f"{where}: 1 links dropped: their trace_id") for w in batch.warnings)


def test_a_span_sent_twice_in_a_request_keeps_the_events_of_its_last_copy() -> None:
    early = make_span(TRACE, ROOT, "chat", START, START + 1)
    early.events.add(name="first copy", time_unix_nano=START)
    late = make_span(TRACE, ROOT, "chat", START, START + 2)
    late.events.add(name="last copy", time_unix_nano=START)
    batch = map_request(make_request([early, late]))
    assert [e["name"] for e in batch.span_events] == ["last copy"]


def test_each_chunk_carries_the_events_of_its_spans() -> None:
    from worker.otlp.mapping import iter_batches

    spans = [make_span(TRACE, f"{n:016x}", f"s{n}", START, START + 1) for n in range(1, 4)]
    for span in spans:
        span.events.add(name=f"event of {span.name}", time_unix_nano=START)
    batches = list(iter_batches(make_request(spans), 2))
    assert [[e["name"] for e in b.span_events] for b in batches] == [
        ["event of s1", "event of s2"],
        ["event of s3"],
    ]
