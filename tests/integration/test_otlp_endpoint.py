from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer
from psycopg.rows import dict_row

from tests.otlp_encode import make_request, make_span, otlp_json
from tests.otlp_server import serve_in_thread
from worker.otlp import conventions
from worker.otlp.server import Settings

USER = "7d3c1a52-1b0e-4f9a-8a53-0e3f1f6c2b11"
KB = "6f1c2b9e-3a57-4c0e-9d51-8f0a2b3c4d5e"
TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
# Within the accepted times: the start of the hour three hours ago.
START = (int(time.time()) // 3600 - 3) * 3600 * 10**9


@pytest.fixture(scope="module")
def endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(migrated_database_url)) as url:
        yield url


def record(build: Callable[[Tracer], None]) -> Sequence[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("tests.otlp"))
    provider.shutdown()
    return memory.get_finished_spans()


def rag_turn(tracer: Tracer) -> None:
    root_attributes = {
        "gen_ai.operation.name": "invoke_agent",
        "user.id": USER,
        "session.id": "session-1",
        "gen_ai.data_source.id": KB,
    }
    with tracer.start_as_current_span("answer question", attributes=root_attributes):
        with tracer.start_as_current_span(
            "retrieval kb",
            attributes={"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": KB},
        ):
            pass
        with tracer.start_as_current_span(
            "embeddings text-embedding-3-small",
            attributes={
                "gen_ai.operation.name": "embeddings",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "text-embedding-3-small",
                "gen_ai.usage.input_tokens": 12,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 800,
                "gen_ai.usage.output_tokens": 120,
                "gen_ai.request.temperature": 0.1,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool search", attributes={"gen_ai.operation.name": "execute_tool"}
        ) as tool:
            tool.record_exception(TimeoutError("search timed out"))
            tool.set_status(Status(StatusCode.ERROR, "search timed out"))


def export(url: str, spans: Sequence[ReadableSpan], **kwargs: Any) -> SpanExportResult:
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=30, **kwargs)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def fetch(url: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def spans_by_name(url: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in fetch(url, "select * from observability.spans")}


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_exporter_rows_have_every_mapped_field(
    endpoint: str, clean_observability: str, compression: Compression
) -> None:
    recorded = record(rag_turn)
    assert export(endpoint, recorded, compression=compression) is SpanExportResult.SUCCESS
    rows = spans_by_name(clean_observability)
    assert len(rows) == 5
    root_id = next(s for s in recorded if s.parent is None).context
    trace_id = f"{root_id.trace_id:032x}"
    assert {r["trace_id"] for r in rows.values()} == {trace_id}

    root = rows["answer question"]
    assert root["parent_span_id"] is None and root["span_type"] == "agent"
    assert root["span_id"] == f"{root_id.span_id:016x}"
    chat = rows["chat gpt-4o"]
    assert chat["parent_span_id"] == root["span_id"]
    assert (chat["span_type"], chat["operation_name"], chat["status"]) == ("llm", "chat", "ok")
    assert (chat["provider"], chat["model"]) == ("openai", "gpt-4o")
    assert (chat["input_tokens"], chat["output_tokens"]) == (800, 120)
    assert chat["attributes"]["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert chat["attributes"]["gen_ai.request.temperature"] == 0.1
    assert chat["attributes"]["service.name"] == "rag-api"
    assert chat["duration_ms"] is not None and chat["ended_at"] >= chat["started_at"]
    embedding = rows["embeddings text-embedding-3-small"]
    assert (embedding["span_type"], embedding["model"], embedding["input_tokens"]) == (
        "embedding",
        "text-embedding-3-small",
        12,
    )
    retrieval = rows["retrieval kb"]
    assert (retrieval["span_type"], retrieval["kb_id"]) == ("retrieval", uuid.UUID(KB))
    tool = rows["execute_tool search"]
    assert (tool["span_type"], tool["status"]) == ("tool", "error")
    assert (tool["error_type"], tool["error_message"]) == ("TimeoutError", "search timed out")

    [trace] = fetch(clean_observability, "select * from observability.traces")
    assert trace["trace_id"] == trace_id and trace["name"] == "answer question"
    assert (trace["operation_type"], trace["status"]) == ("invoke_agent", "ok")
    assert trace["user_id"] == uuid.UUID(USER) and trace["kb_id"] == uuid.UUID(KB)
    assert trace["session_id"] == "session-1"
    assert trace["started_at"] == root["started_at"] and trace["ended_at"] == root["ended_at"]
    assert trace["total_tokens"] == 800 + 120 + 12
    # Priced from the seeded list prices: gpt-4o at 2.50 / 10.00 USD per million tokens.
    assert rows["chat gpt-4o"]["cost_usd"] == Decimal("0.003200")
    assert embedding["cost_usd"] == Decimal(0)  # 12 tokens at 0.02 USD per million
    assert trace["cost_usd"] == Decimal("0.003200")
    assert trace["attributes"]["observability.cost_source"] == "spans"
    assert trace["attributes"]["resource"]["service.name"] == "rag-api"


def test_same_export_twice_leaves_no_duplicates(endpoint: str, clean_observability: str) -> None:
    recorded = record(rag_turn)
    assert export(endpoint, recorded) is SpanExportResult.SUCCESS
    first = fetch(clean_observability, "select * from observability.spans order by span_id")
    assert export(endpoint, recorded) is SpanExportResult.SUCCESS
    again = fetch(clean_observability, "select * from observability.spans order by span_id")
    assert again == first and len(again) == 5
    traces = fetch(clean_observability, "select total_tokens from observability.traces")
    assert traces == [{"total_tokens": 932}]


def post_json(url: str, document: Any, **headers: str) -> httpx.Response:
    body = json.dumps(document).encode()
    return httpx.post(
        f"{url}/v1/traces",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


def test_json_encoding_maps_the_same(endpoint: str, clean_observability: str) -> None:
    attributes = {"gen_ai.operation.name": "chat", "enduser.id": "alice"}
    root = make_span(TRACE, ROOT, "turn", START, START + 2_000_000_000, attributes=attributes)
    child = make_span(
        TRACE,
        "00f067aa0ba902b7",
        "chat claude",
        START + 1_000_000,
        START + 900_000_000,
        parent_span_id=ROOT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-3-5-sonnet",
            "gen_ai.usage.input_tokens": 40,
            "gen_ai.usage.output_tokens": 2,
            "gen_ai.conversation.id": "c-9",
        },
    )
    response = post_json(endpoint, otlp_json(make_request([child, root])))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {}
    rows = spans_by_name(clean_observability)
    assert rows["chat claude"]["model"] == "claude-3-5-sonnet"
    assert rows["chat claude"]["duration_ms"] == 899
    assert (rows["chat claude"]["input_tokens"], rows["chat claude"]["output_tokens"]) == (40, 2)
    [trace] = fetch(clean_observability, "select * from observability.traces")
    assert trace["user_id"] == uuid.uuid5(conventions.USER_NAMESPACE, "alice")
    assert trace["attributes"]["enduser.id"] == "alice"
    assert trace["total_tokens"] == 42 and trace["duration_ms"] == 2000


def test_children_first_root_later(endpoint: str, clean_observability: str) -> None:
    child = make_span(TRACE, "00f067aa0ba902b7", "chat", START + 10, START + 20,
                      parent_span_id=ROOT, attributes={"gen_ai.usage.input_tokens": 5})  # fmt: skip
    body = make_request([child]).SerializeToString()
    headers = {"content-type": "application/x-protobuf"}
    assert httpx.post(f"{endpoint}/v1/traces", content=body, headers=headers).status_code == 200
    assert fetch(clean_observability, "select * from observability.traces") == []
    assert len(fetch(clean_observability, "select * from observability.spans")) == 1
    root = make_span(TRACE, ROOT, "turn", START, START + 30, attributes={"session.id": "s"})
    body = gzip.compress(make_request([root]).SerializeToString())
    response = httpx.post(
        f"{endpoint}/v1/traces", content=body, headers={**headers, "content-encoding": "gzip"}
    )
    assert response.status_code == 200
    assert ExportTraceServiceResponse.FromString(response.content) == ExportTraceServiceResponse()
    [trace] = fetch(clean_observability, "select * from observability.traces")
    assert (trace["name"], trace["session_id"], trace["total_tokens"]) == ("turn", "s", 5)
    assert trace["operation_type"] == "other"
