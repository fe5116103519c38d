from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer, set_span_in_context
from psycopg.rows import dict_row

from tests.otlp_server import serve_in_thread
from worker.otlp.server import Settings

# 28 days ago, on the hour: inside raw-data retention, which the endpoint requires.
START = (int(time.time()) // 3600 - 28 * 24) * 3600 * 10**9
MS = 1_000_000
CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.request.stream": True,
}


@pytest.fixture(scope="module")
def endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(migrated_database_url)) as url:
        yield url


def stream_turn(tracer: Tracer) -> None:
    """A turn with three streamed chat calls, each recording its time to first token in one of
    the ways instrumentations do."""
    root = tracer.start_span("answer question", start_time=START)
    context = set_span_in_context(root)

    # OpenLLMetry: one span event per streamed chunk, no attribute.
    events = tracer.start_span("openai.chat", context, start_time=START, attributes=CHAT)
    for offset in (180, 215, 260, 900):
        events.add_event("gen_ai.content.completion.chunk", timestamp=START + offset * MS)
    events.end(end_time=START + 1_000 * MS)

    # Earlier OpenLLMetry releases name the event differently.
    older = tracer.start_span("cohere.chat", context, start_time=START, attributes=CHAT)
    for offset in (95, 400):
        older.add_event("llm.content.completion.chunk", timestamp=START + offset * MS)
    older.end(end_time=START + 1_000 * MS)

    # GenAI semantic conventions: the span attribute, in seconds.
    attribute = tracer.start_span(
        "chat gpt-4o",
        context,
        start_time=START,
        attributes={**CHAT, "gen_ai.response.time_to_first_chunk": 0.42},
    )
    attribute.end(end_time=START + 1_000 * MS)
    root.end(end_time=START + 2_000 * MS)


def test_sdk_exporter_time_to_first_token_from_chunk_events_and_attribute(
    endpoint: str, clean_observability: str
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    stream_turn(provider.get_tracer("tests.otlp"))
    provider.shutdown()
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=30)
    try:
        assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    rows = fetch(clean_observability, "select * from observability.spans")
    ttft = {row["name"]: row["time_to_first_token_ms"] for row in rows}
    assert ttft == {
        "openai.chat": 180,
        "cohere.chat": 95,
        "chat gpt-4o": 420,
        "answer question": None,
    }
    by_name = {row["name"]: row for row in rows}
    assert "gen_ai.response.time_to_first_chunk" not in by_name["chat gpt-4o"]["attributes"]


def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql).fetchall()
