from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.otlp_encode import key_values, make_request, make_span, otlp_json
from worker.otlp.decode import JSON, PROTOBUF, decode_request
from worker.otlp.mapping import map_request

# Bytes that are not UTF-8 in fields the project does not store replace the span's strings
# there with U+FFFD; in a stored field they refuse the span, as before.

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
START = 1_767_225_600_000_000_000
BAD = b"\xff\xfe"


def marked(tag: str) -> str:
    """A text whose last two bytes (é in UTF-8) are replaced by BAD in the body."""
    return f"{tag}-\u00e9"


def corrupt(body: bytes, *tags: str) -> bytes:
    for tag in tags:
        text = marked(tag).encode()
        assert text in body, tag
        body = body.replace(text, text[:-2] + BAD)
    return body


def span_with_unstored_fields(span_id: str, tag: str) -> Span:
    span = make_span(TRACE, span_id, f"span {tag}", START, START + 10, parent_span_id=ROOT)
    span.trace_state = f"vendor={marked(tag + 'state')}"
    chunk = span.events.add(name=marked(tag + "event"), time_unix_nano=START + 1)
    chunk.attributes.extend(key_values({"note": marked(tag + "eventvalue")}))
    exception = span.events.add(name="exception", time_unix_nano=START + 2)
    exception.attributes.extend(
        key_values(
            {
                "exception.type": "ValueError",
                "exception.stacktrace": marked(tag + "stack"),
                marked(tag + "key"): ["nested", {"deeper": marked(tag + "nested")}],
            }
        )
    )
    link = span.links.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)))
    link.trace_state = f"v={marked(tag + 'linkstate')}"
    link.attributes.extend(key_values({"link.note": marked(tag + "linkvalue")}))
    return span


UNSTORED = ("state", "event", "eventvalue", "stack", "key", "nested", "linkstate", "linkvalue")


def spans_of(request: ExportTraceServiceRequest) -> list[Span]:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_protobuf_bad_bytes_in_unstored_span_fields_are_replaced() -> None:
    span = span_with_unstored_fields("1111111111111111", "a")
    body = corrupt(make_request([span]).SerializeToString(), *("a" + f for f in UNSTORED))
    decoded = decode_request(body, PROTOBUF)
    assert decoded.rejected == []
    [stored] = spans_of(decoded.request)
    assert stored.events[0].name == "aevent-\ufffd\ufffd"
    assert stored.trace_state == "vendor=astate-\ufffd\ufffd"
    assert stored.links[0].attributes[0].value.string_value == "alinkvalue-\ufffd\ufffd"
    nested = stored.events[1].attributes[2].value.array_value.values[1].kvlist_value.values[0]
    assert nested.value.string_value == "anested-\ufffd\ufffd"
    [row] = map_request(decoded).spans
    assert row["name"] == "span a" and row["error_type"] is None  # status not ERROR


def test_protobuf_bad_bytes_in_unstored_scope_and_resource_fields_are_replaced() -> None:
    request = make_request([make_span(TRACE, ROOT, "root", START, START + 10)])
    scope = request.resource_spans[0].scope_spans[0].scope
    scope.version = marked("version")
    scope.attributes.extend(key_values({"scope.note": marked("scopevalue")}))
    ref = request.resource_spans[0].resource.entity_refs.add(type=marked("entity"))
    ref.id_keys.append(marked("idkey"))
    body = corrupt(request.SerializeToString(), "version", "scopevalue", "entity", "idkey")
    decoded = decode_request(body, PROTOBUF)
    assert decoded.rejected == []
    assert [s.name for s in spans_of(decoded.request)] == ["root"]
    assert decoded.request.resource_spans[0].scope_spans[0].scope.version == "version-\ufffd\ufffd"


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("name", "span 0: cannot be decoded"),
        ("attribute", "span 0: cannot be decoded"),
        ("status", "span 0: cannot be decoded"),
        ("exception.type", "span 0: cannot be decoded"),
        ("exception.message", "span 0: cannot be decoded"),
        ("scope name", "its scope cannot be decoded"),
        ("resource", "its resource cannot be decoded"),
    ],
)
def test_protobuf_bad_bytes_in_stored_fields_still_refuse(where: str, reason: str) -> None:
    span = make_span(TRACE, ROOT, "root", START, START + 10)
    request = make_request([span])
    target = request.resource_spans[0].scope_spans[0].spans[0]
    if where == "name":
        target.name = marked("x")
    elif where == "attribute":
        target.attributes.extend(key_values({"gen_ai.request.model": marked("x")}))
    elif where == "status":
        target.status.message = marked("x")
    elif where.startswith("exception."):
        event = target.events.add(name="exception", time_unix_nano=START + 1)
        event.attributes.extend(key_values({where: marked("x")}))
    elif where == "scope name":
        request.resource_spans[0].scope_spans[0].scope.name = marked("x")
    else:
        request.resource_spans[0].resource.attributes.extend(key_values({"k": marked("x")}))
    decoded = decode_request(corrupt(request.SerializeToString(), "x"), PROTOBUF)
    assert spans_of(decoded.request) == []
    [rejected] = decoded.rejected
    assert reason in rejected and "UTF-8" in rejected


def json_body(request: ExportTraceServiceRequest, *tags: str) -> bytes:
    body = json.dumps(otlp_json(request), ensure_ascii=False).encode()
    return corrupt(body, *tags)


def test_json_bad_bytes_in_unstored_fields_are_replaced() -> None:
    span = span_with_unstored_fields("1111111111111111", "a")
    request = make_request([span])
    scope = request.resource_spans[0].scope_spans[0].scope
    scope.version = marked("version")
    scope.attributes.extend(key_values({"scope.note": marked("scopevalue")}))
    tags = [*("a" + f for f in UNSTORED), "version", "scopevalue"]
    decoded = decode_request(json_body(request, *tags), JSON)
    assert decoded.rejected == []
    [stored] = spans_of(decoded.request)
    assert stored.events[0].name == "aevent-\ufffd\ufffd"
    assert stored.trace_state == "vendor=astate-\ufffd\ufffd"
    assert decoded.request.resource_spans[0].scope_spans[0].scope.version == "version-\ufffd\ufffd"


@pytest.mark.parametrize("where", ["name", "exception.message", "scope name"])
def test_json_bad_bytes_in_stored_fields_still_refuse(where: str) -> None:
    span = make_span(TRACE, ROOT, "root", START, START + 10)
    request = make_request([span])
    target = request.resource_spans[0].scope_spans[0].spans[0]
    if where == "name":
        target.name = marked("x")
    elif where == "scope name":
        request.resource_spans[0].scope_spans[0].scope.name = marked("x")
    else:
        event = target.events.add(name="exception", time_unix_nano=START + 1)
        event.attributes.extend(key_values({where: marked("x")}))
    decoded = decode_request(json_body(request, "x"), JSON)
    assert spans_of(decoded.request) == []
    [rejected] = decoded.rejected
    assert "surrogate" in rejected
