from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# The other direction, for clients of the endpoint that are not OpenTelemetry SDKs (and for the
# tests and benchmarks): Python values to OTLP attributes, and a request to OTLP/JSON.


def any_value(value: Any) -> AnyValue:
    if isinstance(value, AnyValue):
        return value
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    result = AnyValue()
    if isinstance(value, Mapping):
        result.kvlist_value.values.extend(key_values(value))
    elif isinstance(value, list | tuple):
        result.array_value.values.extend(any_value(item) for item in value)
    elif value is not None:
        raise TypeError(f"no OTLP attribute value for {type(value).__name__}")
    return result


def key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attributes.items()]


_HEX_IDS = ("traceId", "spanId", "parentSpanId")


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """The request in the OTLP/JSON encoding: hex ids and integer enums."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _hex(span)
                for link in span.get("links", []):
                    _hex(link)
    return document


def _hex(item: dict[str, Any]) -> None:
    for key in _HEX_IDS:
        if key in item:
            item[key] = base64.b64decode(item[key]).hex()


def make_span(
    trace_id: str,
    span_id: str,
    name: str,
    start_ns: int,
    end_ns: int,
    *,
    parent_span_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> Span:
    """A span from hex ids and plain values; error sets an ERROR status with that message."""
    span = Span(
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(span_id),
        parent_span_id=bytes.fromhex(parent_span_id) if parent_span_id else b"",
        name=name,
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        attributes=key_values(attributes or {}),
    )
    if error is not None:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = error
    return span


def make_request(
    spans: list[Span],
    resource: Mapping[str, Any] | None = None,
    scope: str = "worker.otlp",
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(key_values(resource or {}))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = scope
    scope_spans.spans.extend(spans)
    return request
