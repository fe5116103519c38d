from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.otlp_encode import key_values, make_request, otlp_json
from worker.ingest import DEFAULT_LIMITS
from worker.ingest.items import SPAN, TRACE
from worker.models.observability import SPAN_TYPES, TRACE_STATUSES
from worker.otlp import conventions
from worker.otlp.decode import JSON, PROTOBUF, MalformedPayload, decode_request
from worker.otlp.mapping import MappedBatch, map_request

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(st.characters(codec="utf-8"), max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=30,
)
attribute_maps = st.dictionaries(
    st.one_of(
        texts,
        st.sampled_from(
            [
                "gen_ai.operation.name",
                "gen_ai.request.model",
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.output_tokens",
                "gen_ai.data_source.id",
                "user.id",
                "session.id",
                "gen_ai.server.time_to_first_token",
                "gen_ai.response.time_to_first_chunk",
                "openinference.span.kind",
            ]
        ),
    ),
    values,
    max_size=8,
)
times = st.integers(min_value=0, max_value=2**64 - 1)
events = st.builds(
    lambda name, time, attributes: {
        "name": name,
        "time_unix_nano": time,
        "attributes": key_values(attributes),
    },
    st.one_of(texts, st.sampled_from(["exception", *sorted(conventions.STREAM_CHUNK_EVENTS)])),
    times,
    attribute_maps,
)


@st.composite
def spans(draw: st.DrawFn, index: int) -> Span:
    trace_id = draw(st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20)))
    parent = draw(st.one_of(st.just(b""), st.binary(min_size=8, max_size=8), st.binary()))
    return Span(
        trace_id=trace_id,
        # Distinct span ids, so no two spans of a request collapse into one row.
        span_id=draw(st.sampled_from([index.to_bytes(8, "big"), b"", b"\x00" * 8, b"abc"])),
        parent_span_id=parent,
        name=draw(texts),
        start_time_unix_nano=draw(times),
        end_time_unix_nano=draw(times),
        attributes=key_values(draw(attribute_maps)),
        status={"code": draw(st.sampled_from([0, 1, 2])), "message": draw(texts)},
        events=draw(st.lists(events, max_size=3)),
    )


@st.composite
def requests(draw: st.DrawFn) -> Any:
    count = draw(st.integers(min_value=0, max_value=6))
    span_list = [draw(spans(i + 1)) for i in range(count)]
    return make_request(span_list, resource=draw(attribute_maps)), count


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def check_rows(batch: MappedBatch) -> None:
    for row in batch.spans:
        assert re.fullmatch(r"[0-9a-f]{32}", row["trace_id"]) and row["trace_id"] != "0" * 32
        assert re.fullmatch(r"[0-9a-f]{16}", row["span_id"]) and row["span_id"] != "0" * 16
        assert row["parent_span_id"] != row["span_id"]
        assert row["span_type"] in SPAN_TYPES and row["status"] in TRACE_STATUSES
        assert row["ended_at"] is None or row["ended_at"] >= row["started_at"]
        assert row["duration_ms"] is None or 0 <= row["duration_ms"] < 2**31
        for column in ("input_tokens", "output_tokens", "time_to_first_token_ms"):
            assert row[column] is None or 0 <= row[column] < 2**31
    for row in [*batch.spans, *batch.traces]:
        assert row["name"].strip()
        # Storable as jsonb: strict JSON, no NUL, no lone surrogates.
        text = json.dumps(row["attributes"], allow_nan=False)
        assert "\\u0000" not in text
        for s in _strings(row["attributes"]) + [row["name"]]:
            s.encode("utf-8")
    for row in batch.traces:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", row["operation_type"])
    # Whatever the mapper emits, the writer accepts: no span is lost to the writer's limits.
    for kind, rows in ((SPAN, batch.spans), (TRACE, batch.traces)):
        for row in rows:
            kind.validate(row, DEFAULT_LIMITS)


@FUZZ
@given(requests())
def test_mapper_accounts_for_every_span(drawn: Any) -> None:
    request, count = drawn
    batch = map_request(request)
    check_rows(batch)
    assert len(batch.spans) + len(batch.rejected) == count


@FUZZ
@given(requests(), st.data())
def test_corrupted_protobuf_never_crashes(drawn: Any, data: st.DataObject) -> None:
    request, _ = drawn
    body = bytearray(request.SerializeToString())
    for _ in range(data.draw(st.integers(min_value=0, max_value=4))):
        if body:
            position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
            body[position] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        decoded = decode_request(bytes(body), PROTOBUF)
    except MalformedPayload:
        return
    check_rows(map_request(decoded))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(body: bytes) -> None:
    for content_type in (PROTOBUF, JSON):
        try:
            decoded = decode_request(body, content_type)
        except MalformedPayload:
            continue
        check_rows(map_request(decoded))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=20,
)


@FUZZ
@given(requests(), st.data())
def test_mangled_json_never_crashes(drawn: Any, data: st.DataObject) -> None:
    request, count = drawn
    document = otlp_json(request)
    raw_spans = document.get("resourceSpans", [{}])[0].get("scopeSpans", [{}])[0].get("spans", [])
    for span in raw_spans:
        if data.draw(st.booleans()):
            span[data.draw(st.sampled_from(sorted(span)))] = data.draw(json_values)
    decoded = decode_request(json.dumps(document).encode(), JSON)
    batch = map_request(decoded)
    check_rows(batch)
    assert len(batch.spans) + len(batch.rejected) == count


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) of a JSON document, at any depth."""
    found: list[tuple[Any, Any]] = []
    stack = [node]
    while stack:
        current = stack.pop()
        children = current.items() if isinstance(current, dict) else enumerate(current)
        for key, child in children:
            found.append((current, key))
            if isinstance(child, dict | list):
                stack.append(child)
    return found


@FUZZ
@given(requests(), st.data())
def test_json_with_a_mangled_structure_never_crashes(drawn: Any, data: st.DataObject) -> None:
    # Any node of the document (the resourceSpans list, a scope, a span, an attribute's value
    # wrapper...) replaced by any JSON value, or removed: a 400 or per-span rejects, never an
    # exception of another kind.
    request, _ = drawn
    document = otlp_json(request)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        slots = _slots(document)
        if not slots:
            break
        container, key = data.draw(st.sampled_from(slots))
        if data.draw(st.booleans()):
            container[key] = data.draw(json_values)
        elif isinstance(container, dict):
            del container[key]
        else:
            container.pop(key)
    try:
        decoded = decode_request(json.dumps(document).encode(), JSON)
    except MalformedPayload:
        return
    check_rows(map_request(decoded))
