from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from bench.otlp import genai_batch
from tests.otlp_encode import otlp_json
from tests.unit.test_otlp_fuzz import FUZZ, _slots, json_values, requests
from worker.otlp.decode import JSON, PROTOBUF, decode_request
from worker.otlp.json_span import fill_span

ID_KEYS = ("traceId", "spanId", "parentSpanId", "links")


def raw_spans(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        span
        for resource_spans in document.get("resourceSpans", [])
        for scope_spans in resource_spans.get("scopeSpans", [])
        for span in scope_spans.get("spans", [])
    ]


def without_ids(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in ID_KEYS}


def json_format_span(raw: dict[str, Any]) -> Span | None:
    span = Span()
    try:
        json_format.ParseDict(raw, span, ignore_unknown_fields=True)
    except Exception:
        return None
    return span


def assert_same_as_json_format(raw: dict[str, Any]) -> bool:
    """Whether the fast path took the span; when it did, json_format makes the same span."""
    span = Span()
    if not fill_span(copy.deepcopy(raw), span):
        assert span == Span(), "a span given up is left empty"
        return False
    expected = json_format_span(raw)
    assert expected is not None, f"json_format refuses what the fast path took: {raw!r}"
    assert span.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    return True


def test_the_spans_of_sdks_and_the_bench_take_the_fast_path() -> None:
    document = json.loads(
        json.dumps(otlp_json(decode_request(genai_batch(3, 50), PROTOBUF).request))
    )
    spans = raw_spans(document)
    assert len(spans) == 50
    assert all(assert_same_as_json_format(without_ids(raw)) for raw in spans)


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "n", "kind": 3, "startTimeUnixNano": "1", "endTimeUnixNano": 2, "flags": 1},
        {"kind": "SPAN_KIND_SERVER", "status": {}, "events": []},
        {"status": {"code": "STATUS_CODE_ERROR", "message": "m"}, "traceState": "a=b"},
        {"events": [{"timeUnixNano": "5", "name": "e", "droppedAttributesCount": 1}]},
        {"attributes": [{"key": "a"}, {"key": "b", "value": {}}]},
        {"attributes": [{"key": "a", "value": {"arrayValue": {}}}]},
        {"attributes": [{"key": "a", "value": {"arrayValue": {"values": [{"intValue": -3}]}}}]},
        {"attributes": [{"key": "a", "value": {"kvlistValue": {"values": [{"key": "b"}]}}}]},
        {"attributes": [{"key": "x", "value": {"doubleValue": 3}}]},
        {"droppedAttributesCount": 4, "droppedEventsCount": 0, "droppedLinksCount": "7"},
    ],
)
def test_usual_shapes_are_filled_as_json_format_fills_them(raw: dict[str, Any]) -> None:
    assert assert_same_as_json_format(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "\udcff"},  # a byte that was not UTF-8
        {"name": None},
        {"start_time_unix_nano": 1},
        {"startTimeUnixNano": " 1"},
        {"startTimeUnixNano": -1},
        {"startTimeUnixNano": 2**64},
        {"startTimeUnixNano": 1.0},
        {"kind": 9},
        {"kind": "CLIENT"},
        {"kind": True},
        {"unknownField": 1},
        {"attributes": [{"key": "x", "value": {"doubleValue": float("nan")}}]},
        {"attributes": [{"key": "x", "value": {"intValue": "1e3"}}]},
        {"attributes": [{"key": "x", "value": {"intValue": 2**63}}]},
        {"attributes": [{"key": "x", "value": {"intValue": True}}]},
        {"attributes": [{"key": "x", "value": {"bytesValue": "AAE="}}]},
        {"attributes": [{"key": "x", "value": {"stringValue": "a", "intValue": 1}}]},
        {"attributes": [{"key": "x", "value": {"boolValue": 1}}]},
        {"attributes": [{"value": {"boolValue": True}}]},
        {"attributes": {"key": "x"}},
        {"status": {"code": 7}},
    ],
)
def test_unusual_shapes_are_left_to_json_format(raw: dict[str, Any]) -> None:
    assert not assert_same_as_json_format(raw)


@FUZZ
@given(requests(), st.data())
def test_a_mangled_span_is_filled_as_json_format_fills_it_or_left_to_it(
    drawn: Any, data: st.DataObject
) -> None:
    request, _ = drawn
    for raw in raw_spans(otlp_json(request)):
        raw = without_ids(raw)
        for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
            slots = _slots(raw)
            if not slots:
                break
            container, key = data.draw(st.sampled_from(slots))
            if data.draw(st.booleans()):
                container[key] = data.draw(json_values)
            elif isinstance(container, dict):
                del container[key]
            else:
                container.pop(key)
        assert_same_as_json_format(raw)


def test_json_and_protobuf_decode_to_the_same_request() -> None:
    body = genai_batch(5, 200)
    from_protobuf = decode_request(body, PROTOBUF).request
    from_json = decode_request(json.dumps(otlp_json(from_protobuf)).encode(), JSON)
    assert from_json.rejected == []
    assert from_json.request == from_protobuf
