from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

import worker.otlp.grpc_server as grpc_server
from tests.otlp_encode import make_request, make_span
from tests.otlp_server import serve_grpc
from worker.otlp.grpc_server import GrpcReceiver, GrpcSettings
from worker.otlp.server import Settings

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
# Within the accepted times: the start of the hour three hours ago.
START = (int(time.time()) // 3600 - 3) * 3600 * 10**9
LIMIT = 1024 * 1024
TOKEN = "s3cret-grpc-token"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

RawExport = Callable[..., ExportTraceServiceResponse]


@pytest.fixture(scope="module")
def target(migrated_database_url: str) -> Iterator[str]:
    with serve_grpc(Settings(migrated_database_url, max_body_bytes=LIMIT)) as address:
        yield address


@pytest.fixture
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as opened:
        yield opened


def raw_export(channel: grpc.Channel) -> RawExport:
    """Export with a body of bytes as given, not necessarily a request."""
    return channel.unary_unary(EXPORT, response_deserializer=ExportTraceServiceResponse.FromString)


def sibling(name: str = "good sibling", span_id: str = "00f067aa0ba902b7") -> Any:
    return make_span(TRACE, span_id, name, START, START + 5_000_000, parent_span_id=ROOT)


def stored_span_names(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("select name from observability.spans order by name").fetchall()
    return [r[0] for r in rows]


def failure(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def assert_retry_info(error: grpc.RpcError, delay_s: int) -> None:
    """UNAVAILABLE with the retry delay as the OTLP specification and the exporters read it."""
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    trailing = dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert status.code == code_pb2.UNAVAILABLE and status.message == error.details()
    (detail,) = status.details
    retry = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry)
    assert retry.retry_delay.seconds == delay_s
    python_exporter = error_details_pb2.RetryInfo.FromString(trailing["google.rpc.retryinfo-bin"])
    assert python_exporter == retry
    assert trailing["grpc-retry-pushback-ms"] == str(delay_s * 1000)


def test_malformed_body_is_invalid_argument(
    channel: grpc.Channel, clean_observability: str
) -> None:
    error = failure(lambda: raw_export(channel)(b"\x0a\xff\xff\xff\xff\x0f", timeout=30))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not an OTLP ExportTraceServiceRequest" in error.details()
    # The endpoint goes on serving.
    stub = TraceServiceStub(channel)
    assert not stub.Export(make_request([sibling()]), timeout=30).HasField("partial_success")
    assert stored_span_names(clean_observability) == ["good sibling"]


def test_bad_spans_are_rejected_and_valid_siblings_kept(
    channel: grpc.Channel, clean_observability: str
) -> None:
    zero_ids = make_span("0" * 32, "0" * 16, "zero ids", START, START + 1)
    backwards = make_span(TRACE, "1111111111111111", "backwards", START, START - 1)
    not_utf8 = make_span(TRACE, "3333333333333333", "name-\u00e9", START, START + 1)
    request = make_request([zero_ids, backwards, not_utf8, sibling()])
    # gRPC would refuse the whole message for one string that is not UTF-8; the receiver takes
    # the bytes and rejects that span alone.
    body = request.SerializeToString().replace("name-\u00e9".encode(), b"name-\xff\xfe")
    answer = raw_export(channel)(body, timeout=30)
    partial = answer.partial_success
    assert partial.rejected_spans == 3, partial.error_message
    assert "invalid trace_id" in partial.error_message
    assert "ends before it starts" in partial.error_message
    assert "UTF-8" in partial.error_message
    assert stored_span_names(clean_observability) == ["good sibling"]


def test_gzip_request(channel: grpc.Channel, clean_observability: str) -> None:
    request = make_request([sibling()])
    stub = TraceServiceStub(channel)
    answer = stub.Export(request, timeout=30, compression=grpc.Compression.Gzip)
    assert not answer.HasField("partial_success")
    assert stored_span_names(clean_observability) == ["good sibling"]


def test_too_large_before_and_after_decompression(
    channel: grpc.Channel, clean_observability: str
) -> None:
    span = sibling()
    span.attributes.add(key="padding").value.string_value = "x" * (LIMIT + 10)
    request = make_request([span])
    stub = TraceServiceStub(channel)
    error = failure(lambda: stub.Export(request, timeout=30))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # A gzip bomb: a few kB on the wire, over the limit once decompressed.
    assert len(gzip.compress(request.SerializeToString())) < LIMIT // 100
    error = failure(lambda: stub.Export(request, timeout=30, compression=grpc.Compression.Gzip))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stored_span_names(clean_observability) == []


def test_bearer_token(migrated_database_url: str, clean_observability: str) -> None:
    request = make_request([sibling()])
    with (
        serve_grpc(Settings(migrated_database_url, token=TOKEN)) as address,
        grpc.insecure_channel(address) as opened,
    ):
        stub = TraceServiceStub(opened)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            error = failure(lambda m=metadata: stub.Export(request, metadata=m, timeout=30))
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            assert error.details() == "a valid bearer token is needed"
        assert stored_span_names(clean_observability) == []
        # The token is checked before the body is looked at.
        error = failure(lambda: raw_export(opened)(b"\xff", timeout=30))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        stub.Export(request, metadata=(("authorization", f"bearer {TOKEN}"),), timeout=30)
    assert stored_span_names(clean_observability) == ["good sibling"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_down_is_unavailable_with_retry_info() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres?sslmode=disable"
    with (
        serve_grpc(Settings(url, pool_timeout_s=1, retry_after_s=7)) as address,
        grpc.insecure_channel(address) as opened,
    ):
        stub = TraceServiceStub(opened)
        error = failure(lambda: stub.Export(make_request([sibling()]), timeout=30))
        assert_retry_info(error, 7)
        assert error.details() == "the database is unavailable; retry later"
        # Nothing to store needs no database.
        assert not stub.Export(make_request([]), timeout=30).HasField("partial_success")


def test_past_the_in_flight_limit_is_unavailable_with_retry_info(
    migrated_database_url: str,
    clean_observability: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Forcing the fault: the first request is held inside the store until released, so the
    # endpoint is at its limit of one request in flight for as long as the test needs.
    entered, release = threading.Event(), threading.Event()
    real = grpc_server.store_request

    def held(*args: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return real(*args)

    monkeypatch.setattr(grpc_server, "store_request", held)
    settings = GrpcSettings(port=0, max_requests_in_flight=1, busy_retry_after_s=3)
    with (
        serve_grpc(Settings(migrated_database_url), settings) as address,
        grpc.insecure_channel(address) as opened,
    ):
        stub = TraceServiceStub(opened)
        first = stub.Export.future(make_request([sibling("first", "1111111111111111")]))
        assert entered.wait(30)
        error = failure(lambda: stub.Export(make_request([sibling("second")]), timeout=30))
        assert_retry_info(error, 3)
        assert "busy (1 requests in flight)" in error.details()
        assert "busy: 1 gRPC requests in flight, the limit; 1 answered UNAVAILABLE" in caplog.text
        release.set()
        first.result(timeout=30)
        stub.Export(make_request([sibling("third", "3333333333333333")]), timeout=30)
    assert stored_span_names(clean_observability) == ["first", "third"]


def test_an_unexpected_error_is_internal(
    target: str, channel: grpc.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(grpc_server, "store_request", broken)
    error = failure(lambda: TraceServiceStub(channel).Export(make_request([sibling()]), timeout=30))
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "a bug" not in error.details()


def test_a_port_in_use_is_an_error(target: str, migrated_database_url: str) -> None:
    port = int(target.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError):
        GrpcReceiver(Settings(migrated_database_url), GrpcSettings(port=port), "127.0.0.1")
