from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
import requests
from google.rpc import code_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import worker.otlp.export
from tests.otlp_encode import make_request, make_span, otlp_json
from tests.otlp_server import serve_in_thread
from worker.otlp.server import Settings

START = (int(time.time()) // 3600 - 3) * 3600 * 10**9
PROTOBUF = {"content-type": "application/x-protobuf"}


def request_of(n: int) -> Any:
    return make_request([make_span(f"{n + 1:032x}", f"{n + 1:016x}", f"r{n}", START, START + 1)])


def post(url: str, request: Any, timeout: float = 60) -> httpx.Response:
    body = request.SerializeToString()
    return httpx.post(f"{url}/v1/traces", content=body, headers=PROTOBUF, timeout=timeout)


def count_spans(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select count(*) from observability.spans").fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Semaphore, threading.Event]]:
    """Requests being processed wait for the event; the semaphore counts those that started."""
    real = worker.otlp.export.iter_batches
    started, release = threading.Semaphore(0), threading.Event()

    def waiting(*args: Any, **kwargs: Any) -> Any:
        started.release()
        release.wait(60)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(worker.otlp.export, "iter_batches", waiting)
    yield started, release
    release.set()


def test_past_the_limit_the_answer_is_503_with_retry_after_at_once(
    migrated_database_url: str,
    clean_observability: str,
    held: tuple[threading.Semaphore, threading.Event],
) -> None:
    started, release = held
    settings = Settings(migrated_database_url, max_concurrent_requests=2, max_requests_in_flight=2)
    with serve_in_thread(settings) as url, ThreadPoolExecutor(2) as pool:
        admitted = [pool.submit(post, url, request_of(n)) for n in range(2)]
        assert started.acquire(timeout=30) and started.acquire(timeout=30)
        # Both admitted requests are still held: the next one is refused without waiting.
        began = time.monotonic()
        refused = post(url, request_of(2), timeout=10)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        status = status_pb2.Status.FromString(refused.content)
        assert status.code == code_pb2.UNAVAILABLE
        assert status.message == "the endpoint is busy (2 requests in flight); retry later"
        as_json = httpx.post(
            f"{url}/v1/traces",
            content=json.dumps(otlp_json(request_of(3))),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert as_json.status_code == 503 and as_json.headers["retry-after"] == "1"
        assert json.loads(as_json.content)["code"] == code_pb2.UNAVAILABLE
        assert time.monotonic() - began < 10
        release.set()
        assert [f.result().status_code for f in admitted] == [200, 200]
        # Room again once they are done.
        assert post(url, request_of(4)).status_code == 200
    assert count_spans(clean_observability) == 3


def sdk_spans(traces: int) -> list[list[ReadableSpan]]:
    """Per trace, a root and two children made by the OpenTelemetry SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.admission")
    for n in range(traces):
        with tracer.start_as_current_span(f"turn {n}"):
            for step in ("retrieve", "chat"):
                with tracer.start_as_current_span(step, attributes={"gen_ai.request.model": "m"}):
                    pass
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in memory.get_finished_spans():
        assert span.context is not None
        by_trace.setdefault(span.context.trace_id, []).append(span)
    return list(by_trace.values())


def test_sdk_exporters_retry_past_a_busy_endpoint_and_deliver_everything(
    migrated_database_url: str, clean_observability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = worker.otlp.export.iter_batches

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)  # each request takes a while: a burst fills the endpoint
        yield from real(*args, **kwargs)

    monkeypatch.setattr(worker.otlp.export, "iter_batches", slow)
    batches = sdk_spans(12)
    seen: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with lock:
            seen.append((response.status_code, response.headers.get("retry-after")))

    def export(url: str, spans: list[ReadableSpan]) -> SpanExportResult:
        session = requests.Session()
        session.hooks["response"].append(record)
        exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=30, session=session)
        try:
            return exporter.export(spans)
        finally:
            exporter.shutdown()

    settings = Settings(migrated_database_url, max_concurrent_requests=1, max_requests_in_flight=2)
    with serve_in_thread(settings) as url, ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(lambda spans: export(url, spans), batches))
    assert results == [SpanExportResult.SUCCESS] * len(batches)
    assert count_spans(clean_observability) == 3 * len(batches)
    busy = [after for status, after in seen if status == 503]
    assert busy, "the burst was never refused: the test proves nothing"
    assert all(
        after is not None and 1 <= int(after) <= settings.busy_retry_after_s for after in busy
    )
    assert len(set(busy)) > 1, "the retries of a burst are spread over several seconds"
    assert sum(1 for status, _ in seen if status == 200) == len(batches)
