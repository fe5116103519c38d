from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_exporter
from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_exporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode, Tracer
from psycopg.rows import dict_row

from tests.observability_db import empty_observability
from tests.otlp_server import serve_grpc, serve_in_thread
from worker.embedded.engine import EmbeddedEngine
from worker.otlp import grpc_server
from worker.otlp.server import Settings
from worker.schema.migrate import migrate

USER = "7d3c1a52-1b0e-4f9a-8a53-0e3f1f6c2b11"
KB = "6f1c2b9e-3a57-4c0e-9d51-8f0a2b3c4d5e"
TOKEN = "grpc-test-token"
# Values set by the database itself (a sequence or identity, a random id, the time of the
# insert) differ between two deliveries of the same spans; every other column must not.
GENERATED = ("nextval(", "gen_random_uuid(", "now()", "clock_timestamp(", "current_timestamp")


@pytest.fixture(scope="module")
def grpc_endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_grpc(Settings(migrated_database_url)) as target:
        yield target


def record(build: Any) -> Sequence[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("tests.otlp.grpc"))
    provider.shutdown()
    return memory.get_finished_spans()


def agent_turn(tracer: Tracer) -> None:
    root_attributes = {
        "gen_ai.operation.name": "invoke_agent",
        "user.id": USER,
        "session.id": "session-1",
        "gen_ai.data_source.id": KB,
    }
    with tracer.start_as_current_span("answer question", attributes=root_attributes) as root:
        with tracer.start_as_current_span(
            "retrieval kb",
            attributes={"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": KB},
        ) as retrieval:
            retrieval.add_event("retrieval.hit", {"document.id": "doc-7", "score": 0.91})
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
            links=[Link(retrieval.get_span_context(), {"link.kind": "grounded-on"})],
        ) as chat:
            chat.add_event("gen_ai.content.chunk", {"index": 0})
        with tracer.start_as_current_span(
            "execute_tool search", attributes={"gen_ai.operation.name": "execute_tool"}
        ) as tool:
            tool.record_exception(TimeoutError("search timed out"))
            tool.set_status(Status(StatusCode.ERROR, "search timed out"))
        root.add_event("guardrail.decision", {"allowed": True})


def export_grpc(target: str, spans: Sequence[ReadableSpan], **kwargs: Any) -> SpanExportResult:
    kwargs.setdefault("timeout", 30)
    exporter = grpc_exporter.OTLPSpanExporter(endpoint=target, insecure=True, **kwargs)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def export_http(url: str, spans: Sequence[ReadableSpan], **kwargs: Any) -> SpanExportResult:
    exporter = http_exporter.OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=30, **kwargs)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql).fetchall()


def stored_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every observability table about traces (those with a trace_id column,
    whichever exist now), without the columns the database fills in itself, in a fixed order."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        columns = conn.execute(
            "select c.table_name, c.column_name, c.column_default, c.is_identity"
            " from information_schema.columns c"
            " join information_schema.tables t using (table_schema, table_name)"
            " where c.table_schema = 'observability' and t.table_type = 'BASE TABLE'"
            "   and c.table_name in (select table_name from information_schema.columns"
            "     where table_schema = 'observability' and column_name = 'trace_id')"
            " order by c.table_name, c.ordinal_position"
        ).fetchall()
        kept: dict[str, list[str]] = {}
        for column in columns:
            default = (column["column_default"] or "").lower()
            generated = column["is_identity"] == "YES" or any(m in default for m in GENERATED)
            if not generated:
                kept.setdefault(column["table_name"], []).append(column["column_name"])
        rows = {}
        for table, names in kept.items():
            listed = ", ".join(f'"{name}"' for name in names)
            # As text, so that any column type orders (json has no ordering).
            query = f"select {listed} from observability.{table} order by row({listed})::text"
            rows[table] = conn.execute(query.encode()).fetchall()
    return rows


@pytest.mark.parametrize("compression", [grpc_exporter.Compression.NoCompression,
                                         grpc_exporter.Compression.Gzip])  # fmt: skip
def test_official_grpc_exporter_stores_the_spans(
    grpc_endpoint: str, clean_observability: str, compression: Any
) -> None:
    recorded = record(agent_turn)
    assert export_grpc(grpc_endpoint, recorded, compression=compression) is SpanExportResult.SUCCESS
    rows = {r["name"]: r for r in fetch(clean_observability, "select * from observability.spans")}
    assert set(rows) == {"answer question", "retrieval kb", "chat gpt-4o", "execute_tool search"}
    root_context = next(s for s in recorded if s.parent is None).context
    trace_id = f"{root_context.trace_id:032x}"
    assert {r["trace_id"] for r in rows.values()} == {trace_id}
    assert rows["answer question"]["span_type"] == "agent"
    assert rows["answer question"]["span_id"] == f"{root_context.span_id:016x}"
    chat = rows["chat gpt-4o"]
    assert (chat["span_type"], chat["provider"], chat["model"]) == ("llm", "openai", "gpt-4o")
    assert (chat["input_tokens"], chat["output_tokens"]) == (800, 120)
    assert str(rows["retrieval kb"]["kb_id"]) == KB
    tool = rows["execute_tool search"]
    assert (tool["status"], tool["error_type"]) == ("error", "TimeoutError")
    traces = fetch(
        clean_observability, "select trace_id, name, user_id::text from observability.traces"
    )
    assert traces == [{"trace_id": trace_id, "name": "answer question", "user_id": USER}]


def test_grpc_and_http_exporters_store_equal_rows(
    grpc_endpoint: str, migrated_database_url: str, obs_cleanup_conn: psycopg.Connection
) -> None:
    # The same recorded spans, delivered by each official exporter in turn into an emptied
    # database: the rows must be equal field by field, ids included.
    recorded = record(agent_turn)
    empty_observability(obs_cleanup_conn)
    try:
        assert export_grpc(grpc_endpoint, recorded) is SpanExportResult.SUCCESS
        over_grpc = stored_rows(migrated_database_url)
        empty_observability(obs_cleanup_conn)
        with serve_in_thread(Settings(migrated_database_url)) as url:
            assert export_http(url, recorded) is SpanExportResult.SUCCESS
        over_http = stored_rows(migrated_database_url)
    finally:
        empty_observability(obs_cleanup_conn)
    assert len(over_grpc["spans"]) == 4 and len(over_grpc["traces"]) == 1
    assert over_grpc.keys() == over_http.keys()
    for table in over_grpc:
        assert over_grpc[table] == over_http[table], table


def test_official_exporter_with_the_bearer_token(
    migrated_database_url: str, clean_observability: str
) -> None:
    recorded = record(agent_turn)
    with serve_grpc(Settings(migrated_database_url, token=TOKEN)) as target:
        assert export_grpc(target, recorded) is SpanExportResult.FAILURE
        assert fetch(clean_observability, "select count(*) as n from observability.spans") == [
            {"n": 0}
        ]
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert export_grpc(target, recorded, headers=headers) is SpanExportResult.SUCCESS
    assert fetch(clean_observability, "select count(*) as n from observability.spans") == [{"n": 4}]


def test_official_exporter_waits_out_a_busy_endpoint(
    migrated_database_url: str, clean_observability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # UNAVAILABLE with retry info is retried by the exporter after the delay it names, so a
    # request refused while the endpoint is at its limit is delivered once it has room.

    entered, release = threading.Event(), threading.Event()
    real = grpc_server.store_request

    def held_once(*args: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        return real(*args)

    monkeypatch.setattr(grpc_server, "store_request", held_once)
    first, second = record(agent_turn), record(agent_turn)
    results: list[SpanExportResult] = []
    settings = grpc_server.GrpcSettings(port=0, max_requests_in_flight=1, busy_retry_after_s=1)
    with serve_grpc(Settings(migrated_database_url), settings) as target:
        holder = threading.Thread(target=lambda: results.append(export_grpc(target, first)))
        holder.start()
        assert entered.wait(30)
        started = time.monotonic()
        threading.Timer(1.5, release.set).start()
        assert export_grpc(target, second) is SpanExportResult.SUCCESS
        assert time.monotonic() - started >= 1.0, "the refused export was retried too early"
        holder.join(30)
    assert results == [SpanExportResult.SUCCESS]
    assert fetch(clean_observability, "select count(*) as n from observability.spans") == [{"n": 8}]


def test_official_exporter_delivers_once_the_database_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The exporter waits the retry delay the endpoint names, so an outage shorter than its
    # retries loses nothing. 20 s: its six tries then span 100 s, room for the engine to start
    # and migrate on a loaded machine.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    recorded = record(agent_turn)
    results: list[SpanExportResult] = []
    with serve_grpc(Settings(url, pool_timeout_s=1, retry_after_s=20)) as target:
        sender = threading.Thread(
            target=lambda: results.append(export_grpc(target, recorded, timeout=180))
        )
        sender.start()
        deadline = time.monotonic() + 30
        while "database unavailable" not in caplog.text:
            assert time.monotonic() < deadline, "the first export was not refused"
            time.sleep(0.1)
        with EmbeddedEngine(port=port, log_path=tmp_path / "engine.log") as engine:
            migrate(engine.url)
            sender.join(180)
            assert results == [SpanExportResult.SUCCESS]
            stored = fetch(engine.url, "select count(*) as n from observability.spans")
    assert stored == [{"n": 4}]
