from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode, Tracer, set_span_in_context
from psycopg.rows import dict_row

from tests.otlp_encode import make_request, make_span, otlp_json
from tests.otlp_server import serve_in_thread
from worker.ingest import DEFAULT_LIMITS
from worker.otlp.server import Settings

# 28 days ago, on the hour: inside raw-data retention, which the endpoint requires.
START = (int(time.time()) // 3600 - 28 * 24) * 3600 * 10**9
MS = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
}


@pytest.fixture(scope="module")
def endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(migrated_database_url)) as url:
        yield url


def fetch(url: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def at(offset_ms: int) -> datetime:
    return EPOCH + timedelta(microseconds=(START + offset_ms * MS) // 1000)


def finished(record: Any, limits: SpanLimits | None = None) -> list[ReadableSpan]:
    """The spans record(tracer) makes, finished by the SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "agent-api"}), span_limits=limits
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    record(provider.get_tracer("tests.span_events"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def export(endpoint: str, spans: Sequence[ReadableSpan]) -> None:
    """Through the official OTLP/HTTP exporter."""
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=30)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def post(endpoint: str, spans: Sequence[ReadableSpan]) -> Any:
    """The exporter's own encoding of the spans, posted to read the partial success it logs."""
    response = httpx.post(
        f"{endpoint}/v1/traces",
        content=encode_spans(spans).SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
        timeout=60,
    )
    assert response.status_code == 200, response.content
    return ExportTraceServiceResponse.FromString(response.content).partial_success


def agent_turn(tracer: Tracer) -> None:
    """A first trace that plans, and a second that fans in from it (a follow-up run linking to
    the planning step): tool calls, a retrieval hit, guardrail decisions, a streamed answer and
    a failed call, as span events."""
    root = tracer.start_span("agent run", start_time=START)
    context = set_span_in_context(root)
    tool = tracer.start_span(
        "execute_tool web_search",
        context,
        start_time=START + 10 * MS,
        attributes={"gen_ai.operation.name": "execute_tool"},
    )
    tool.add_event(
        "gen_ai.tool.message",
        {"gen_ai.tool.name": "web_search", "gen_ai.tool.call.id": "call_1"},
        timestamp=START + 40 * MS,
    )
    tool.end(end_time=START + 50 * MS)
    retrieval = tracer.start_span("retrieve", context, start_time=START + 60 * MS)
    retrieval.add_event(
        "retrieval.hit",
        {"document.id": "doc-7", "score": 0.91},
        timestamp=START + 70 * MS,
    )
    retrieval.end(end_time=START + 80 * MS)
    chat = tracer.start_span("chat gpt-4o", context, start_time=START + 100 * MS, attributes=CHAT)
    chat.add_event("guardrail.input", {"decision": "allow"}, timestamp=START + 101 * MS)
    for offset in (350, 380):
        chat.add_event("gen_ai.content.completion.chunk", timestamp=START + offset * MS)
    chat.add_event("guardrail.output", {"decision": "block"}, timestamp=START + 400 * MS)
    chat.record_exception(
        ValueError("answer blocked by the output guardrail"), timestamp=START + 401 * MS
    )
    chat.set_status(Status(StatusCode.ERROR))
    chat.end(end_time=START + 410 * MS)
    root.end(end_time=START + 500 * MS)

    follow_up = tracer.start_span(
        "follow-up run",
        start_time=START + 600 * MS,
        links=[Link(tool.get_span_context(), {"link.reason": "continues"})],
    )
    follow_up.end(end_time=START + 700 * MS)


def test_sdk_events_and_links_are_stored_and_queryable(
    endpoint: str, clean_observability: str
) -> None:
    spans = finished(agent_turn)
    export(endpoint, spans)
    by_name = {span.name: span for span in spans}
    first = f"{by_name['agent run'].context.trace_id:032x}"
    second = f"{by_name['follow-up run'].context.trace_id:032x}"
    tool_span = f"{by_name['execute_tool web_search'].context.span_id:016x}"

    events = fetch(clean_observability, "select * from observability.trace_events(%s)", [first])
    assert [(e["span_name"], e["name"], e["kind"]) for e in events] == [
        ("execute_tool web_search", "gen_ai.tool.message", "tool_call"),
        ("retrieve", "retrieval.hit", "retrieval"),
        ("chat gpt-4o", "guardrail.input", "guardrail"),
        ("chat gpt-4o", "gen_ai.content.completion.chunk", "stream_chunk"),
        ("chat gpt-4o", "gen_ai.content.completion.chunk", "stream_chunk"),
        ("chat gpt-4o", "guardrail.output", "guardrail"),
        ("chat gpt-4o", "exception", "exception"),
    ]
    assert [e["occurred_at"] for e in events] == [
        at(ms) for ms in (40, 70, 101, 350, 380, 400, 401)
    ]
    assert events[0]["attributes"] == {
        "gen_ai.tool.name": "web_search",
        "gen_ai.tool.call.id": "call_1",
    }
    assert events[0]["span_type"] == "tool" and events[0]["offset_ms"] == 30
    assert events[1]["attributes"] == {"document.id": "doc-7", "score": 0.91}
    assert events[-1]["attributes"]["exception.type"] == "ValueError"

    wanted = fetch(
        clean_observability,
        "select kind, attributes"
        " from observability.trace_events(%s, array['tool_call', 'guardrail'])",
        [first],
    )
    assert [(w["kind"], w["attributes"].get("decision")) for w in wanted] == [
        ("tool_call", None),
        ("guardrail", "allow"),
        ("guardrail", "block"),
    ]

    # All traces' events by kind over a time window, as a dashboard asks.
    blocked = fetch(
        clean_observability,
        "select public.time_bucket('1 hour', span_started_at) as hour, count(*) as n"
        " from observability.classified_span_events"
        " where kind = 'guardrail' and attributes ->> 'decision' = 'block'"
        "   and span_started_at >= %s and span_started_at < %s group by 1",
        [at(0), at(3_600_000)],
    )
    assert blocked == [{"hour": at(0), "n": 1}]

    # The error fields and the time to first token are still derived from the events.
    [chat] = fetch(
        clean_observability,
        "select status, error_type, error_message, time_to_first_token_ms"
        " from observability.spans where name = 'chat gpt-4o'",
    )
    assert chat == {
        "status": "error",
        "error_type": "ValueError",
        "error_message": "answer blocked by the output guardrail",
        "time_to_first_token_ms": 250,
    }

    link = {
        "linked_trace_id": first,
        "linked_span_id": tool_span,
        "attributes": {"link.reason": "continues"},
    }
    outgoing = fetch(clean_observability, "select * from observability.trace_links(%s)", [second])
    assert outgoing == [
        {"direction": "out", "trace_id": second, "span_id": outgoing[0]["span_id"],
         "span_name": "follow-up run", **link}
    ]  # fmt: skip
    incoming = fetch(clean_observability, "select * from observability.trace_links(%s)", [first])
    assert incoming == [{**outgoing[0], "direction": "in"}]
    [stored] = fetch(
        clean_observability, "select links from observability.spans where trace_id = %s", [second]
    )
    assert stored["links"] == [
        {"trace_id": first, "span_id": tool_span, "attributes": link["attributes"]}
    ]


def test_a_re_sent_export_stores_each_event_once(endpoint: str, clean_observability: str) -> None:
    spans = finished(agent_turn)
    export(endpoint, spans)
    query = "select * from observability.span_events order by trace_id, span_id, event_index"
    first = fetch(clean_observability, query)
    export(endpoint, spans)
    export(endpoint, list(reversed(spans)))
    assert fetch(clean_observability, query) == first
    assert len(first) == 7


def test_a_re_sent_span_replaces_its_events(endpoint: str, clean_observability: str) -> None:
    """A span sent again with other events, and a later start, has the new events only, in the
    chunk of its new start."""
    [span] = finished(lambda tracer: _span_with_events(tracer, 3))

    def again(start_ms: int, names: Sequence[str]) -> ReadableSpan:
        return ReadableSpan(
            name=span.name,
            context=span.context,
            resource=span.resource,
            attributes=span.attributes,
            events=[span.events[0].__class__(n, timestamp=START + start_ms * MS) for n in names],
            start_time=START + start_ms * MS,
            end_time=START + (start_ms + 100) * MS,
            instrumentation_scope=span.instrumentation_scope,
        )

    export(endpoint, [span])
    assert len(fetch(clean_observability, "select * from observability.span_events")) == 3
    # Two days later: another chunk.
    moved = 2 * 86_400_000
    export(endpoint, [again(moved, ["guardrail.check"])])
    rows = fetch(clean_observability, "select * from observability.span_events")
    assert [(r["name"], r["event_index"], r["span_started_at"]) for r in rows] == [
        ("guardrail.check", 0, at(moved))
    ]
    export(endpoint, [again(moved, [])])
    assert fetch(clean_observability, "select * from observability.span_events") == []
    [stored] = fetch(clean_observability, "select started_at from observability.spans")
    assert stored["started_at"] == at(moved)


def _span_with_events(tracer: Tracer, count: int) -> None:
    span = tracer.start_span("tool loop", start_time=START)
    for n in range(count):
        span.add_event(f"tool.call.{n}", {"n": n}, timestamp=START + (n + 1) * MS)
    span.end(end_time=START + 100 * MS)


def test_events_and_links_past_the_limits_are_dropped_with_a_warning(
    endpoint: str, clean_observability: str
) -> None:
    max_events = DEFAULT_LIMITS.max_events_per_span
    max_links = DEFAULT_LIMITS.max_links_per_span
    # SDKs keep 128 events and links by default; an application may raise the caps.
    limits = SpanLimits(max_events=1_000, max_links=1_000)
    target = finished(lambda tracer: tracer.start_span("target", start_time=START).end(START + MS))
    context = target[0].get_span_context()

    def record(tracer: Tracer) -> None:
        links = [Link(context, {"n": n}) for n in range(max_links + 7)]
        span = tracer.start_span("busy", start_time=START, links=links)
        for n in range(max_events + 44):
            span.add_event("gen_ai.content.completion.chunk", timestamp=START + (n + 1) * MS)
        span.end(end_time=START + 1_000 * MS)

    [busy] = finished(record, limits)
    result = post(endpoint, [busy])
    where = f"span {busy.context.trace_id:032x}/{busy.context.span_id:016x}"
    assert result.rejected_spans == 0
    assert (
        f"{where}: 44 of {max_events + 44:,} events dropped (at most {max_events} stored per span)"
        in result.error_message
    )
    assert (
        f"{where}: 7 of {max_links + 7:,} links dropped (at most {max_links} stored per span)"
        in result.error_message
    )
    [count] = fetch(
        clean_observability,
        "select count(*) as n, max(event_index) as last from observability.span_events",
    )
    assert count == {"n": max_events, "last": max_events - 1}
    [span] = fetch(
        clean_observability, "select links, time_to_first_token_ms from observability.spans"
    )
    assert [link["attributes"]["n"] for link in span["links"]] == list(range(max_links))
    assert span["time_to_first_token_ms"] == 1


def test_a_sender_side_drop_is_kept_on_the_span(endpoint: str, clean_observability: str) -> None:
    def record(tracer: Tracer) -> None:
        span = tracer.start_span("capped", start_time=START)
        for n in range(5):
            span.add_event("step", {"n": n}, timestamp=START + (n + 1) * MS)
        span.end(end_time=START + 100 * MS)

    [capped] = finished(record, SpanLimits(max_events=3))
    export(endpoint, [capped])
    [span] = fetch(clean_observability, "select attributes from observability.spans")
    assert span["attributes"]["otel.dropped_events_count"] == 2
    events = fetch(clean_observability, "select attributes from observability.span_events")
    assert sorted(e["attributes"]["n"] for e in events) == [2, 3, 4]


@pytest.mark.parametrize(
    ("name", "attributes", "kind"),
    [
        ("exception", {"exception.type": "KeyError"}, "exception"),
        ("gen_ai.client.operation.exception", {}, "exception"),
        ("llm.content.completion.chunk", {}, "stream_chunk"),
        ("guardrail", {}, "guardrail"),
        ("content_filter", {"guardrail.decision": "block"}, "guardrail"),
        ("gen_ai.tool.message", {}, "tool_call"),
        ("function_call", {}, "tool_call"),
        ("step", {"gen_ai.tool.name": "calculator"}, "tool_call"),
        ("retriever.documents", {}, "retrieval"),
        ("hit", {"gen_ai.data_source.id": "kb-1"}, "retrieval"),
        ("gen_ai.evaluation.result", {}, "evaluation"),
        ("gen_ai.choice", {}, "message"),
        ("gen_ai.user.message", {}, "message"),
        ("cache.miss", {"tool": "x"}, "other"),
    ],
)
def test_event_kinds(
    migrated_database_url: str, name: str, attributes: dict[str, Any], kind: str
) -> None:
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        row = conn.execute(
            "select observability.span_event_kind(%s, %s::jsonb)",
            [name, psycopg.types.json.Jsonb(attributes)],
        ).fetchone()
    assert row == (kind,)


def test_otlp_json_links_and_events_are_stored(endpoint: str, clean_observability: str) -> None:
    trace, other = "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"
    span = make_span(trace, "b7ad6b7169203331", "fan-in", START, START + 10 * MS)
    good = span.links.add(trace_id=bytes.fromhex(other), span_id=bytes.fromhex("00f067aa0ba902b7"))
    good.attributes.add(key="k").value.string_value = "v"
    span.links.add(trace_id=bytes.fromhex(other), span_id=bytes.fromhex("00f067aa0ba902b8"))
    span.events.add(name="guardrail.check", time_unix_nano=START + MS)
    document = otlp_json(make_request([span]))
    # A link id that is not hex costs that link only, with a warning.
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["links"][1]["spanId"] = "zz"
    response = httpx.post(
        f"{endpoint}/v1/traces",
        content=json.dumps(document).encode(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.content
    message = response.json()["partialSuccess"]["errorMessage"]
    assert f"span {trace}/b7ad6b7169203331: 1 links dropped: their trace_id or span_id" in message
    [stored] = fetch(clean_observability, "select links from observability.spans")
    assert stored["links"] == [
        {"trace_id": other, "span_id": "00f067aa0ba902b7", "attributes": {"k": "v"}}
    ]
    events = fetch(clean_observability, "select name, occurred_at from observability.span_events")
    assert events == [{"name": "guardrail.check", "occurred_at": at(0) + timedelta(milliseconds=1)}]
