from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.common import (
    GroupResult,
    Options,
    describe_url,
    fmt_rate,
    fmt_ratio,
    fmt_seconds,
    median,
    progress,
    render_table,
    server_info,
)
from bench.otlp import BATCH, database, endpoint, genai_batch, send, set_jobs
from tests.otlp_encode import key_values
from worker.schema.install import install

# What storing span events and links costs the OTLP endpoint: the same GenAI spans without
# events, then each with EVENTS events (streamed chunks, a tool message, a guardrail decision)
# and one link, first sent and then re-sent (the stored events are looked up and kept).
EVENTS = 4
TABLES = "observability.spans, observability.traces, observability.span_events"


def with_events(number: int) -> bytes:
    request = ExportTraceServiceRequest.FromString(genai_batch(number))
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                start = span.start_time_unix_nano
                for n in range(EVENTS - 2):
                    span.events.add(
                        name="gen_ai.content.completion.chunk",
                        time_unix_nano=start + (n + 1) * 20_000_000,
                    )
                tool = span.events.add(name="gen_ai.tool.message", time_unix_nano=start + 1)
                tool.attributes.extend(
                    key_values({"gen_ai.tool.name": "search", "gen_ai.tool.call.id": "call_1"})
                )
                guard = span.events.add(name="guardrail.output", time_unix_nano=start + 2)
                guard.attributes.extend(key_values({"decision": "allow"}))
                link = span.links.add(trace_id=span.trace_id[::-1], span_id=span.span_id[::-1])
                link.attributes.extend(key_values({"link.reason": "fan-in"}))
    return request.SerializeToString()


@dataclass
class Rates:
    plain_s: list[float] = field(default_factory=list)
    events_s: list[float] = field(default_factory=list)
    resent_s: list[float] = field(default_factory=list)
    plain_spans_per_s: float | None = None
    events_spans_per_s: float | None = None
    resent_spans_per_s: float | None = None
    events_ratio: float | None = None
    resent_ratio: float | None = None


def empty(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"truncate {TABLES}, observability.trace_extents")


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"select count(*) from observability.{table}").fetchone()
    return int(row[0]) if row else 0


def measure(conn: psycopg.Connection[Any], url: str, opts: Options, n: int) -> Rates:
    batches = n // BATCH
    progress(f"events: encoding {batches} batches of {BATCH:,} spans, without and with events")
    plain = [genai_batch(b) for b in range(batches)]
    eventful = [with_events(b) for b in range(batches)]
    rates = Rates()
    with endpoint(url) as server:
        send(server.url, iter([with_events(10_000)]))  # warm-up
        empty(conn)
        for run in range(1, opts.repeat + 1):
            for bodies, times in ((plain, rates.plain_s), (eventful, rates.events_s)):
                began = time.perf_counter()
                send(server.url, iter(bodies))
                times.append(time.perf_counter() - began)
                if bodies is eventful:
                    began = time.perf_counter()
                    send(server.url, iter(bodies))
                    rates.resent_s.append(time.perf_counter() - began)
                    stored = count(conn, "span_events")
                    if stored != n * EVENTS:
                        raise RuntimeError(f"stored {stored:,} events, expected {n * EVENTS:,}")
                if count(conn, "spans") != n:
                    raise RuntimeError("the endpoint did not store every span")
                empty(conn)
            progress(
                f"  run {run}/{opts.repeat}: plain {rates.plain_s[-1]:.2f}s, with events "
                f"{rates.events_s[-1]:.2f}s, re-sent {rates.resent_s[-1]:.2f}s"
            )
    for name in ("plain", "events", "resent"):
        seconds = median(getattr(rates, f"{name}_s"))
        setattr(rates, f"{name}_spans_per_s", n / seconds if seconds else None)
    if rates.plain_spans_per_s:
        if rates.events_spans_per_s:
            rates.events_ratio = rates.events_spans_per_s / rates.plain_spans_per_s
        if rates.resent_spans_per_s:
            rates.resent_ratio = rates.resent_spans_per_s / rates.plain_spans_per_s
    return rates


def run(opts: Options) -> GroupResult:
    started = time.perf_counter()
    n = max(BATCH, opts.rows // BATCH * BATCH)
    with database(opts) as url, psycopg.connect(url, autocommit=True, connect_timeout=30) as conn:
        install(conn)
        if count(conn, "spans"):
            raise SystemExit("events benchmark: observability.spans is not empty")
        server = server_info(conn)
        set_jobs(conn, scheduled=False)
        try:
            rates = measure(conn, url, opts, n)
        finally:
            set_jobs(conn, scheduled=True)
    target = "a fresh in-memory embedded engine" if opts.database_url is None else "DATABASE_URL"
    payload = {
        "options": {"spans": n, "batch": BATCH, "events_per_span": EVENTS, "repeat": opts.repeat},
        "target": {**describe_url(url), **server, "kind": target},
        "duration_s": round(time.perf_counter() - started, 3),
        "rates": asdict(rates),
    }
    rows = [
        ["no events or links", median(rates.plain_s), rates.plain_spans_per_s, 1.0],
        [
            f"{EVENTS} events and 1 link per span",
            median(rates.events_s),
            rates.events_spans_per_s,
            rates.events_ratio,
        ],
        ["the same, re-sent", median(rates.resent_s), rates.resent_spans_per_s, rates.resent_ratio],
    ]
    report = render_table(
        f"OTLP ingest with span events: {n:,} GenAI spans on {target}, median of {opts.repeat}",
        ["spans", "seconds", "spans/s", "ratio"],
        [[r[0], fmt_seconds(r[1]), fmt_rate(r[2]), fmt_ratio(r[3])] for r in rows],
        "lrrr",
    )
    return GroupResult(payload, report, rates.events_ratio is not None)
