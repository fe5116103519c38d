from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

import worker.ingest
import worker.otlp.export
from tests.otlp_encode import make_request, make_span
from tests.otlp_server import serve_in_thread
from worker.otlp.mapping import map_request
from worker.otlp.server import Settings
from worker.otlp.store import store

TRACE = "4af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
# Within the accepted times: the start of the hour three hours ago.
START = (int(time.time()) // 3600 - 3) * 3600 * 10**9
PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture(scope="module")
def endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(migrated_database_url, retry_after_s=9)) as url:
        yield url


def post(url: str, request: Any) -> httpx.Response:
    body = request.SerializeToString()
    return httpx.post(f"{url}/v1/traces", content=body, headers=PROTOBUF, timeout=60)


def partial(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.content
    return ExportTraceServiceResponse.FromString(response.content).partial_success


def child(span_id: str, name: str, **attributes: Any) -> Any:
    return make_span(
        TRACE,
        span_id,
        name,
        START,
        START + 10**9,
        parent_span_id=ROOT,
        attributes=attributes,
    )


def root() -> Any:
    return make_span(TRACE, ROOT, "root", START, START + 10**9)


def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_a_model_too_long_for_its_index_is_cut_and_the_request_stored(
    endpoint: str, clean_observability: str
) -> None:
    # A model name over ~2,700 bytes broke the btree index: 503 forever, nothing stored.
    long_model = "m" * 5000
    request = make_request(
        [root(), child("00f067aa0ba902b7", "good"), child("00f067aa0ba902b8", "long", **{
            "gen_ai.request.model": long_model, "session.id": "s" * 3000})]
    )  # fmt: skip
    result = partial(post(endpoint, request))
    assert result.rejected_spans == 0
    assert "cut to fit their indexed columns" in result.error_message
    rows = fetch(clean_observability, "select name, model from observability.spans order by name")
    assert rows == [("good", None), ("long", "m" * 1000), ("root", None)]


def test_token_totals_past_int4_are_null_with_a_warning(
    endpoint: str, clean_observability: str
) -> None:
    # 4e9 tokens do not fit the int4 total: stored as NULL (unknown), never cut to the
    # column's maximum, and the response says so.
    big = {"gen_ai.request.model": "x", "gen_ai.usage.input_tokens": 2_000_000_000}
    big["gen_ai.usage.output_tokens"] = 2_000_000_000
    first = make_request([root(), child("00f067aa0ba902b7", "c", **big)])
    answer = partial(post(endpoint, first))
    assert answer.rejected_spans == 0
    assert f"trace {TRACE}: total_tokens stored as NULL" in answer.error_message
    assert "4,000,000,000" in answer.error_message
    later = make_request([child("00f067aa0ba902b8", "later")])
    assert post(endpoint, later).status_code == 200
    assert fetch(clean_observability, "select total_tokens from observability.traces") == [(None,)]
    assert fetch(clean_observability, "select count(*) from observability.spans") == [(3,)]


class Calls:
    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Calls, list[str]]]:
    """Counts the writer's calls; faults listed in the second item are applied before each."""
    real = worker.ingest.write_batch
    seen = Calls()
    faults: list[str] = []

    def counting(conn: psycopg.Connection, **items: Any) -> Any:
        seen.count += 1
        for statement in faults:
            conn.execute(statement)
        return real(conn, **items)

    monkeypatch.setattr(worker.ingest, "write_batch", counting)
    yield seen, faults


def test_a_read_only_database_is_503_not_rejected_spans(
    endpoint: str, clean_observability: str, calls: tuple[Calls, list[str]]
) -> None:
    seen, faults = calls
    faults.append("set transaction read only")  # as on a standby: SQLSTATE 25006
    spans = [root()] + [child(f"{n:016x}", f"c{n}") for n in range(1, 8)]
    response = post(endpoint, make_request(spans))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "9"
    assert status_pb2.Status.FromString(response.content).code == code_pb2.UNAVAILABLE
    assert seen.count == 1, "the batch is not split for a database-wide error"
    assert fetch(clean_observability, "select count(*) from observability.spans") == [(0,)]


def test_a_missing_table_is_500_without_splitting(
    endpoint: str, clean_observability: str, calls: tuple[Calls, list[str]]
) -> None:
    seen, faults = calls
    faults.append("select * from observability.no_such_table")  # SQLSTATE 42P01
    spans = [root()] + [child(f"{n:016x}", f"c{n}") for n in range(1, 8)]
    response = post(endpoint, make_request(spans))
    assert response.status_code == 500
    assert status_pb2.Status.FromString(response.content).code == code_pb2.INTERNAL
    assert seen.count == 1
    assert fetch(clean_observability, "select count(*) from observability.spans") == [(0,)]


def test_store_raises_rather_than_refusing_spans_on_a_read_only_database(
    clean_observability: str,
) -> None:
    batch = map_request(make_request([root(), child("00f067aa0ba902b7", "c")]))
    with psycopg.connect(clean_observability) as conn:
        conn.execute("set transaction read only")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            store(conn, batch)
        conn.rollback()
        assert store(conn, batch).refused == []
    assert fetch(clean_observability, "select count(*) from observability.spans") == [(2,)]


def test_a_request_is_written_in_chunks(
    migrated_database_url: str, clean_observability: str
) -> None:
    spans = [root()] + [child(f"{n:016x}", f"c{n}", **{"gen_ai.request.model": "m",
        "gen_ai.usage.input_tokens": n}) for n in range(1, 10)]  # fmt: skip
    spans.append(make_span("0" * 32, "1" * 16, "bad ids", START, START + 1))
    with serve_in_thread(Settings(migrated_database_url, chunk_spans=3)) as url:
        result = partial(post(url, make_request(spans)))
    assert result.rejected_spans == 1 and "invalid trace_id" in result.error_message
    assert fetch(clean_observability, "select count(*) from observability.spans") == [(10,)]
    # The totals cover the spans of every chunk.
    assert fetch(clean_observability, "select total_tokens from observability.traces") == [(45,)]


def test_concurrent_requests_are_bounded(
    migrated_database_url: str, clean_observability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = worker.otlp.export.iter_batches
    lock = threading.Lock()
    active = [0, 0]  # now, most at once

    def slow(*args: Any, **kwargs: Any) -> Any:
        with lock:
            active[0] += 1
            active[1] = max(active)
        try:
            time.sleep(0.2)
            yield from real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(worker.otlp.export, "iter_batches", slow)
    requests = [
        make_request([make_span(f"{n + 1:032x}", ROOT, f"r{n}", START, START + 1)])
        for n in range(6)
    ]
    settings = Settings(migrated_database_url, max_concurrent_requests=2, max_requests_in_flight=6)
    with serve_in_thread(settings) as url, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda r: post(url, r), requests))
    assert [r.status_code for r in responses] == [200] * 6
    assert active[1] == 2
    assert fetch(clean_observability, "select count(*) from observability.traces") == [(6,)]
