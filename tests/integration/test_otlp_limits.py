from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg.rows import dict_row

from tests.otlp_encode import make_request, make_span, otlp_json
from tests.otlp_server import serve_in_thread
from worker.otlp.attributes import MAX_ITEMS
from worker.otlp.server import Settings

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
# 28 days ago, on the hour: inside raw-data retention, which the endpoint requires.
START = (int(time.time()) // 3600 - 28 * 24) * 3600 * 10**9
PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(migrated_database_url)) as url:
        yield url


def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql).fetchall()


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/traces", content=body, headers=headers, timeout=60)


def partial(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.content
    if response.headers["content-type"].startswith("application/json"):
        return response.json().get("partialSuccess", {})
    return ExportTraceServiceResponse.FromString(response.content).partial_success


def test_sdk_span_with_more_attributes_than_the_limit_keeps_its_columns(
    endpoint: str, clean_observability: str
) -> None:
    memory = InMemorySpanExporter()
    # SDKs cap span attributes at 128 by default; an application may raise the cap.
    provider = TracerProvider(
        resource=Resource.create({"service.name": "rag-api"}),
        span_limits=SpanLimits(max_span_attributes=MAX_ITEMS + 200),
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("tests.otlp").start_as_current_span("chat gpt-4o") as span:
        for i in range(MAX_ITEMS + 100):
            span.set_attribute(f"app.retrieved.{i}", i)
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 800,
                "gen_ai.usage.output_tokens": 120,
            }
        )
    provider.shutdown()
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=30)
    try:
        assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    [row] = fetch(clean_observability, "select * from observability.spans")
    assert (row["span_type"], row["provider"], row["model"]) == ("llm", "openai", "gpt-4o")
    assert (row["input_tokens"], row["output_tokens"]) == (800, 120)
    assert row["cost_usd"] == Decimal("0.003200")
    stored = [key for key in row["attributes"] if key.startswith("app.retrieved.")]
    assert len(stored) == MAX_ITEMS


def test_an_over_deep_json_attribute_refuses_only_its_span(
    endpoint: str, clean_observability: str
) -> None:
    spans = [
        make_span(TRACE, ROOT, "root", START, START + 10**9),
        make_span(TRACE, "00f067aa0ba902b7", "deep", START, START + 1, parent_span_id=ROOT),
    ]
    document = otlp_json(make_request(spans))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["attributes"] = [
        {"key": "deep", "value": "@DEEP@"}
    ]
    levels = 5_000  # far past Python's recursion limit
    deep = '{"kvlistValue": {"values": [{"key": "k", "value": ' * levels
    deep += '{"stringValue": "leaf"}' + "}]}}" * levels
    body = json.dumps(document).replace('"@DEEP@"', deep).encode()
    result = partial(post(endpoint, body, JSON))
    assert result["rejectedSpans"] == "1"
    assert "span 1" in result["errorMessage"] and "nested deeper" in result["errorMessage"]
    stored = fetch(clean_observability, "select name from observability.spans")
    assert [r["name"] for r in stored] == ["root"]


def test_bytes_not_utf8_in_events_links_and_unstored_fields_do_not_cost_the_span(
    endpoint: str, clean_observability: str
) -> None:
    kept = make_span(TRACE, ROOT, "kept", START, START + 10**9)
    kept.events.add(name="chunk-\u00e9", time_unix_nano=START + 1)
    link = kept.links.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)))
    link.attributes.add(key="note").value.string_value = "link-\u00e9"
    refused = make_span(TRACE, "00f067aa0ba902b7", "name-\u00e9", START, START + 1)
    request = make_request([kept, refused])
    request.resource_spans[0].scope_spans[0].scope.version = "1.0-\u00e9"
    body = request.SerializeToString()
    for text in ("chunk-\u00e9", "link-\u00e9", "1.0-\u00e9", "name-\u00e9"):
        body = body.replace(text.encode(), text.encode()[:-2] + b"\xff\xfe")
    result = partial(post(endpoint, body, PROTOBUF))
    assert result.rejected_spans == 1
    assert "span 1: cannot be decoded" in result.error_message and "UTF-8" in result.error_message
    # Events and links are stored: the bytes replaced are said so.
    assert (
        "resource 0, scope 0, span 0: bytes that were not UTF-8 in its events, links or trace "
        "state replaced by U+FFFD"
    ) in result.error_message
    stored = fetch(clean_observability, "select name, links from observability.spans")
    assert [r["name"] for r in stored] == ["kept"]
    assert stored[0]["links"][0]["attributes"] == {"note": "link-\ufffd\ufffd"}
    events = fetch(clean_observability, "select name from observability.span_events")
    assert events == [{"name": "chunk-\ufffd\ufffd"}]


def test_a_thirty_day_span_is_stored_with_a_warning_naming_duration_ms(
    endpoint: str, clean_observability: str
) -> None:
    end = START + 30 * 86_400 * 10**9
    request = make_request([make_span(TRACE, ROOT, "batch job", START, end)])
    result = partial(post(endpoint, request.SerializeToString(), PROTOBUF))
    assert result.rejected_spans == 0
    limit = "more than the column holds (2,147,483,647 ms, about 24.8 days)"
    assert f"span {TRACE}/{ROOT}: duration_ms stored as NULL: 2,592,000,000 ms is {limit}" in (
        result.error_message
    )
    assert f"trace {TRACE}: duration_ms stored as NULL: 2,592,000,000 ms is {limit}" in (
        result.error_message
    )
    for table in ("spans", "traces"):
        [row] = fetch(clean_observability, f"select * from observability.{table}")
        assert row["duration_ms"] is None and row["ended_at"] is not None
