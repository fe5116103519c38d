from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from tests.oracle.model import JSON, SDK, BulkExport, Export, OtlpExport, OtlpSpan, Step
from tests.otlp_encode import otlp_json
from tests.otlp_server import serve_in_thread
from worker.ingest import write_batch
from worker.otlp.server import Settings
from worker.schema.migrate import CONNECT_ARGS

# Delivery through the store's real entry points: the official OTLP/HTTP exporter, OTLP/JSON
# posted to the same endpoint, and the bulk writer. The exports of one step go out at once, one
# thread each.

SCOPE = InstrumentationScope("tests.oracle", "1.0")
_STATUS = {"unset": StatusCode.UNSET, "ok": StatusCode.OK, "error": StatusCode.ERROR}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


@dataclass
class Outcome:
    export: Export
    ok: bool
    detail: str = ""
    rejected_spans: int | None = None  # OTLP/JSON: partial_success.rejected_spans
    rejected_items: set[tuple[str, int]] | None = None  # bulk: (kind, index) of each reject


_resources: dict[frozenset[tuple[str, Any]], Resource] = {}


def readable(span: OtlpSpan) -> ReadableSpan:
    key = frozenset(span.resource.items())
    resource = _resources.get(key)
    if resource is None:
        resource = _resources.setdefault(key, Resource.create(span.resource))
    trace_id = int(span.trace_id, 16)
    context = SpanContext(trace_id, int(span.span_id, 16), is_remote=False, trace_flags=_SAMPLED)
    parent = None
    if span.parent_id is not None:
        parent = SpanContext(
            trace_id, int(span.parent_id, 16), is_remote=False, trace_flags=_SAMPLED
        )
    status = Status(_STATUS[span.status], span.status_message if span.status == "error" else None)
    return ReadableSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=span.attributes,
        events=[Event(e.name, e.attributes, e.time_ns) for e in span.events],
        kind=SpanKind.SERVER if span.parent_id is None else SpanKind.CLIENT,
        status=status,
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=SCOPE,
    )


class Sender:
    def __init__(self, database_url: str, endpoint: str, threads: int = 6) -> None:
        self.database_url = database_url
        self.endpoint = endpoint
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="oracle-send")
        self.local = threading.local()
        self.connections: list[psycopg.Connection[Any]] = []
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}  # exports per path
        self.seconds: dict[str, float] = {}  # time spent in them (threads add up)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for conn in self.connections:
            conn.close()

    def send(self, step: Step) -> list[Outcome]:
        if len(step.exports) == 1:
            return [self._one(step.exports[0])]
        return list(self.pool.map(self._one, step.exports))

    def _one(self, export: Export) -> Outcome:
        started = time.perf_counter()
        try:
            return self._deliver(export)
        finally:
            with self.lock:
                self.counts[export.path] = self.counts.get(export.path, 0) + 1
                self.seconds[export.path] = self.seconds.get(export.path, 0.0) + (
                    time.perf_counter() - started
                )

    def _deliver(self, export: Export) -> Outcome:
        try:
            if isinstance(export, BulkExport):
                return self._bulk(export)
            if export.path == SDK:
                return self._sdk(export)
            if export.path == JSON:
                return self._json(export)
            raise ValueError(f"unknown path {export.path}")
        except Exception as exc:  # reported as a difference, with the seed
            return Outcome(export, False, f"{type(exc).__name__}: {exc}")

    def _sdk(self, export: OtlpExport) -> Outcome:
        exporter = OTLPSpanExporter(endpoint=f"{self.endpoint}/v1/traces", timeout=60)
        try:
            result = exporter.export([readable(s) for s in export.spans])
        finally:
            exporter.shutdown()
        return Outcome(export, result is SpanExportResult.SUCCESS, str(result))

    def _json(self, export: OtlpExport) -> Outcome:
        document = otlp_json(encode_spans([readable(s) for s in export.spans]))
        response = httpx.post(
            f"{self.endpoint}/v1/traces",
            content=json.dumps(document).encode(),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        if response.status_code != 200:
            return Outcome(export, False, f"HTTP {response.status_code}: {response.text[:300]}")
        partial = response.json().get("partialSuccess", {})
        rejected = int(partial.get("rejectedSpans", 0))
        return Outcome(export, True, partial.get("errorMessage", ""), rejected_spans=rejected)

    def _connection(self) -> psycopg.Connection[Any]:
        conn = getattr(self.local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.database_url, **CONNECT_ARGS)
            self.local.conn = conn
            with self.lock:
                self.connections.append(conn)
        return conn

    def _bulk(self, export: BulkExport) -> Outcome:
        conn = self._connection()
        result = write_batch(
            conn,
            traces=list(export.traces),
            spans=list(export.spans),
            document_events=list(export.document_events),
        )
        conn.commit()
        rejects = {(r.kind, r.index) for r in result.rejected}
        reasons = "; ".join(r.reason for r in result.rejected[:3])
        return Outcome(export, True, reasons, rejected_items=rejects)


@contextmanager
def endpoint(database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(database_url)) as url:
        yield url
