from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.otlp_encode import make_request, make_span, otlp_json
from worker.otlp.body import TooLarge, read_body
from worker.otlp.decode import JSON, PROTOBUF, MalformedPayload, decode_request
from worker.otlp.mapping import map_request

TRACE = "0af7651916cd43dd8448eb211c80319c"
START = 1_767_225_600_000_000_000


def spans(*names: str) -> list:
    return [
        make_span(TRACE, f"{i + 1:016x}", name, START, START + 1000, attributes={"n": i})
        for i, name in enumerate(names)
    ]


def names(decoded) -> list[str]:
    return [
        s.name for rs in decoded.request.resource_spans for ss in rs.scope_spans for s in ss.spans
    ]


def test_protobuf_round_trip() -> None:
    request = make_request(spans("a", "b"), resource={"service.name": "svc"})
    decoded = decode_request(request.SerializeToString(), PROTOBUF)
    assert decoded.request == request and decoded.rejected == []


def test_json_round_trip_with_hex_ids() -> None:
    request = make_request(spans("a", "b"), resource={"service.name": "svc"})
    document = otlp_json(request)
    assert document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == TRACE
    decoded = decode_request(json.dumps(document).encode(), JSON)
    assert decoded.request == request and decoded.rejected == []


@pytest.mark.parametrize("body", [b"", b"{}", b'{"resourceSpans": []}'])
def test_empty_json_request(body: bytes) -> None:
    assert names(decode_request(body, JSON)) == []


def test_empty_protobuf_request() -> None:
    assert names(decode_request(b"", PROTOBUF)) == []


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xff\xff\xff", PROTOBUF),
        (b"\x0a\x05abc", PROTOBUF),  # length runs past the end
        (b"{not json", JSON),
        (b"[1, 2]", JSON),
        (b'{"resourceSpans": {"x": 1}}', JSON),
        (b'{"resourceSpans": [{"scopeSpans": 3}]}', JSON),
        (b'{"resourceSpans": [5]}', JSON),
        (b'{"resourceSpans": [null]}', JSON),
        (b'{"resourceSpans": [{"scopeSpans": ["scope"]}]}', JSON),
        (b'{"resourceSpans": [{"scopeSpans": [[]]}]}', JSON),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": 7}]}]}', JSON),
        (b"[" * 100_000 + b"]" * 100_000, JSON),
    ],
)
def test_malformed_payloads(body: bytes, content_type: str) -> None:
    with pytest.raises(MalformedPayload):
        decode_request(body, content_type)


def test_protobuf_non_utf8_and_too_deep_spans_fail_alone() -> None:
    request = make_request(spans("bad\u00e9name", "good", "deep"))
    deep = AnyValue(string_value="leaf")
    for _ in range(150):
        outer = AnyValue()
        outer.kvlist_value.values.add(key="k").value.CopyFrom(deep)
        deep = outer
    span = request.resource_spans[0].scope_spans[0].spans[2]
    span.attributes.add(key="deep").value.CopyFrom(deep)
    body = request.SerializeToString().replace("bad\u00e9name".encode(), b"bad\xff\xfename")
    decoded = decode_request(body, PROTOBUF)
    assert names(decoded) == ["good"]
    assert len(decoded.rejected) == 2
    assert (
        decoded.rejected[0].startswith("resource 0, scope 0, span 0")
        and "UTF-8" in (decoded.rejected[0])
    )
    assert decoded.rejected[1].startswith("resource 0, scope 0, span 2")
    assert len(map_request(decoded).rejected) == 2


def test_protobuf_bad_resource_rejects_its_spans_only() -> None:
    request = make_request(spans("a"), resource={"service.name": "svc-\u00e9"})
    request.resource_spans.append(make_request(spans("b")).resource_spans[0])
    body = request.SerializeToString().replace("svc-\u00e9".encode(), b"svc-\xff\xfe")
    decoded = decode_request(body, PROTOBUF)
    assert names(decoded) == ["b"] and "its resource" in decoded.rejected[0]


def test_json_bad_spans_fail_alone() -> None:
    document = otlp_json(make_request(spans("a", "b", "c", "d", "e")))
    raw = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    raw[0]["traceId"] = "not-hex"
    raw[1]["name"] = "\udcff lone surrogate"
    raw[2]["startTimeUnixNano"] = "soon"
    raw[3] = "not an object"
    body = json.dumps(document).encode().replace(b'"e"', b'"\xff"')  # a non-UTF-8 name
    decoded = decode_request(body, JSON)
    assert names(decoded) == []
    assert len(decoded.rejected) == 5
    assert "traceId must be 32 hex digits" in decoded.rejected[0]


@pytest.mark.parametrize("resource", [5, "text", [1], {"attributes": 3}])
def test_json_odd_resource_or_scope_rejects_its_spans(resource: object) -> None:
    for part in ("resource", "scope"):
        document = otlp_json(make_request(spans("a", "b")))
        target = document["resourceSpans"][0]
        if part == "scope":
            target = target["scopeSpans"][0]
        target[part] = resource
        decoded = decode_request(json.dumps(document).encode(), JSON)
        assert names(decoded) == [] and len(decoded.rejected) == 2
        assert f"its {part} cannot be decoded" in decoded.rejected[0]


def test_json_keeps_good_siblings() -> None:
    document = otlp_json(make_request(spans("a", "b")))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "123"
    decoded = decode_request(json.dumps(document).encode(), JSON)
    assert names(decoded) == ["b"] and "spanId must be 16 hex digits" in decoded.rejected[0]


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read(data: bytes, encoding: str, limit: int) -> bytes:
    return asyncio.run(read_body(_chunks(data), encoding, limit))


def test_body_identity_and_gzip() -> None:
    payload = b"abc" * 5000
    assert read(payload, "identity", 20_000) == payload
    assert read(gzip.compress(payload), "gzip", 20_000) == payload
    assert read(zlib.compress(payload), "deflate", 20_000) == payload
    # Several gzip members one after another make one body.
    assert read(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 100) == b"abcd"


def test_body_limits_apply_before_and_after_decompression() -> None:
    with pytest.raises(TooLarge):
        read(b"x" * 20_001, "identity", 20_000)
    bomb = gzip.compress(b"\x00" * 10_000_000)
    assert len(bomb) < 20_000
    with pytest.raises(TooLarge, match="decompressed"):
        read(bomb, "gzip", 20_000)


@pytest.mark.parametrize("data", [b"not gzip at all", gzip.compress(b"x" * 1000)[:-12]])
def test_body_corrupt_or_truncated_gzip(data: bytes) -> None:
    with pytest.raises(MalformedPayload):
        read(data, "gzip", 20_000)


def test_json_links_round_trip_and_repaired_events_are_reported() -> None:
    [span] = spans("a")
    span.links.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex("00f067aa0ba902b7"))
    span.events.add(name="tool call", time_unix_nano=START)
    request = make_request([span], resource={"service.name": "svc"})
    document = otlp_json(request)
    raw = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert raw["links"][0]["spanId"] == "00f067aa0ba902b7"  # hex in OTLP/JSON
    decoded = decode_request(json.dumps(document).encode(), JSON)
    assert decoded.request == request and decoded.repaired == []

    raw["events"][0]["name"] = "tool \udcff call"  # a byte that was not UTF-8
    decoded = decode_request(json.dumps(document).encode(), JSON)
    assert names(decoded) == ["a"] and decoded.rejected == []
    assert decoded.repaired == ["resource 0, scope 0, span 0"]
    batch = map_request(decoded)
    assert [e["name"] for e in batch.span_events] == ["tool \ufffd call"]
    assert any("replaced by U+FFFD" in w for w in batch.warnings)
