from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.otlp_encode import make_request, make_span, otlp_json
from tests.otlp_server import serve_in_thread
from worker.embedded.engine import EmbeddedEngine
from worker.otlp.attributes import MAX_STRING_CHARS
from worker.otlp.mapping import map_request
from worker.otlp.server import Settings
from worker.otlp.store import store
from worker.schema.migrate import migrate

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
# Within the accepted times: the start of the hour three hours ago.
START = (int(time.time()) // 3600 - 3) * 3600 * 10**9
PROTOBUF = {"content-type": "application/x-protobuf"}
LIMIT = 1024 * 1024
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(migrated_database_url, max_body_bytes=LIMIT)) as url:
        yield url


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/traces", content=body, headers=headers or PROTOBUF, timeout=30)


def status_of(response: httpx.Response) -> status_pb2.Status:
    return status_pb2.Status.FromString(response.content)


def stored_span_names(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("select name from observability.spans order by name").fetchall()
    return [r[0] for r in rows]


def sibling(name: str = "good sibling", span_id: str = "00f067aa0ba902b7") -> Any:
    return make_span(TRACE, span_id, name, START, START + 5_000_000, parent_span_id=ROOT)


def assert_alive(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("headers", [PROTOBUF, {"content-type": "application/json"}])
def test_empty_request_succeeds(endpoint: str, headers: dict[str, str]) -> None:
    response = post(endpoint, b"", headers)
    assert response.status_code == 200
    if headers is PROTOBUF:
        assert (
            ExportTraceServiceResponse.FromString(response.content).partial_success.ByteSize() == 0
        )
    else:
        assert response.json() == {}


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"\xff\xff\xff\xff\xff", PROTOBUF),
        (b"{ nope", {"content-type": "application/json"}),
        (b'["not", "an", "object"]', {"content-type": "application/json"}),
        (b'{"resourceSpans": [5]}', {"content-type": "application/json"}),
        (b'{"resourceSpans": [{"scopeSpans": ["scope"]}]}', {"content-type": "application/json"}),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": 7}]}]}',
            {"content-type": "application/json"},
        ),
        (b"definitely not gzip", {**PROTOBUF, "content-encoding": "gzip"}),
    ],
)
def test_malformed_payload_is_400(endpoint: str, body: bytes, headers: dict[str, str]) -> None:
    response = post(endpoint, body, headers)
    assert response.status_code == 400
    if headers["content-type"] == "application/json":
        assert response.json()["code"] == code_pb2.INVALID_ARGUMENT
    else:
        assert status_of(response).code == code_pb2.INVALID_ARGUMENT
    assert_alive(endpoint)


def test_unsupported_media_type_is_415(endpoint: str) -> None:
    assert post(endpoint, b"x", {"content-type": "text/plain"}).status_code == 415
    assert post(endpoint, b"x", {**PROTOBUF, "content-encoding": "br"}).status_code == 415


def test_oversized_body_is_413(endpoint: str, clean_observability: str) -> None:
    response = post(endpoint, b"\x00" * (LIMIT + 1))
    assert response.status_code == 413
    assert status_of(response).code == code_pb2.RESOURCE_EXHAUSTED

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(300):
            yield b"\x00" * 4096

    response = httpx.post(f"{endpoint}/v1/traces", content=chunks(), headers=PROTOBUF)
    assert response.status_code == 413
    bomb = gzip.compress(b"\x00" * (20 * LIMIT))
    assert len(bomb) < LIMIT
    response = post(endpoint, bomb, {**PROTOBUF, "content-encoding": "gzip"})
    assert response.status_code == 413 and "decompressed" in status_of(response).message
    assert stored_span_names(clean_observability) == []
    assert_alive(endpoint)


def test_bad_spans_are_rejected_and_valid_siblings_kept(
    endpoint: str, clean_observability: str
) -> None:
    zero_ids = make_span("0" * 32, "0" * 16, "zero ids", START, START + 1)
    backwards = make_span(TRACE, "1111111111111111", "backwards", START, START - 1)
    gigantic = make_span(TRACE, "2222222222222222", "gigantic", START, START + 1,
                         attributes={"prompt": "p" * (MAX_STRING_CHARS + 100)})  # fmt: skip
    not_utf8 = make_span(TRACE, "3333333333333333", "name-\u00e9", START, START + 1)
    deep = AnyValue(string_value="leaf")
    for _ in range(120):
        outer = AnyValue()
        outer.kvlist_value.values.add(key="k").value.CopyFrom(deep)
        deep = outer
    too_deep = make_span(TRACE, "4444444444444444", "too deep", START, START + 1)
    request = make_request([zero_ids, backwards, gigantic, not_utf8, too_deep, sibling()])
    in_request = request.resource_spans[0].scope_spans[0].spans[4]
    in_request.attributes.add(key="deep").value.CopyFrom(deep)
    body = request.SerializeToString().replace("name-\u00e9".encode(), b"name-\xff\xfe")

    response = post(endpoint, body)
    assert response.status_code == 200
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 4, partial.error_message
    assert "invalid trace_id" in partial.error_message
    assert "ends before it starts" in partial.error_message
    assert "UTF-8" in partial.error_message
    assert f"cut to {MAX_STRING_CHARS} characters" in partial.error_message
    assert stored_span_names(clean_observability) == ["gigantic", "good sibling"]
    assert_alive(endpoint)


def test_json_partial_success(endpoint: str, clean_observability: str) -> None:
    document = otlp_json(make_request([sibling("a", "1111111111111111"), sibling("b")]))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "xyz"
    response = post(endpoint, json.dumps(document).encode(), {"content-type": "application/json"})
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "traceId" in partial["errorMessage"]
    assert stored_span_names(clean_observability) == ["b"]


def test_writer_rejects_are_reported(clean_observability: str) -> None:
    batch = map_request(make_request([sibling("bad type", "5555555555555555"), sibling()]))
    batch.spans[0]["span_type"] = "not-a-type"  # past the mapper, as only the writer checks
    with psycopg.connect(clean_observability) as conn:
        refused = store(conn, batch).refused
    assert [r.kind for r in refused] == ["span"]
    assert "5555555555555555" in refused[0].reason and "span_type" in refused[0].reason
    assert stored_span_names(clean_observability) == ["good sibling"]


def test_database_refusal_loses_only_the_refused_row(
    clean_observability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A row the writer passes but the database refuses: forced, as the writer checks all the
    # schema's constraints itself.
    import worker.ingest

    real = worker.ingest.write_batch

    def refusing(conn: psycopg.Connection, **items: Any) -> Any:
        if any(s["name"] == "poison" for s in items.get("spans", ())):
            conn.execute("select 1")  # inside the transaction the failure then aborts
            raise psycopg.errors.CheckViolation("new row violates a check constraint")
        return real(conn, **items)

    monkeypatch.setattr(worker.ingest, "write_batch", refusing)
    names = [f"span {i}" for i in range(7)] + ["poison"]
    spans = [sibling(name, f"{i + 1:016x}") for i, name in enumerate(names)]
    batch = map_request(make_request(spans))
    with psycopg.connect(clean_observability) as conn:
        refused = store(conn, batch).refused
    assert len(refused) == 1 and "refused by the database" in refused[0].reason
    assert stored_span_names(clean_observability) == sorted(names[:-1])


def test_bearer_token(migrated_database_url: str, clean_observability: str) -> None:
    settings = Settings(migrated_database_url, token=TOKEN)
    body = make_request([sibling()]).SerializeToString()
    with serve_in_thread(settings) as url:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            response = post(url, body, {**PROTOBUF, **headers})
            assert response.status_code == 401
            assert status_of(response).code == code_pb2.UNAUTHENTICATED
        assert stored_span_names(clean_observability) == []
        response = post(url, body, {**PROTOBUF, "authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
    assert stored_span_names(clean_observability) == ["good sibling"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_down_is_503_with_retry_after() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres?sslmode=disable"
    settings = Settings(url, pool_timeout_s=1, retry_after_s=7)
    with serve_in_thread(settings) as endpoint:
        response = post(endpoint, make_request([sibling()]).SerializeToString())
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert status_of(response).code == code_pb2.UNAVAILABLE
        # Nothing to store needs no database.
        assert post(endpoint, b"").status_code == 200
        assert_alive(endpoint)


def test_recovers_when_the_database_comes_back(tmp_path: Path) -> None:
    port = closed_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    body = make_request([sibling()]).SerializeToString()
    with serve_in_thread(Settings(url, pool_timeout_s=1)) as endpoint:
        assert post(endpoint, body).status_code == 503
        with EmbeddedEngine(port=port, log_path=tmp_path / "engine.log") as engine:
            migrate(engine.url)
            deadline = time.monotonic() + 90
            while (response := post(endpoint, body)).status_code == 503:
                assert time.monotonic() < deadline, "the endpoint never reconnected"
                time.sleep(0.5)
            assert response.status_code == 200
            assert stored_span_names(engine.url) == ["good sibling"]
