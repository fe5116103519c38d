from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

# 50 services flushing at once, one export each (the burst the issue measured), each with the
# SDK's batch span processor (at most 512 spans per export) and the official OTLP/HTTP exporter
# with its default settings (10 s per export, retries on 429/502/503/504 honouring Retry-After).
EXPORTERS = 50
EXPORTS_EACH = 1
SPANS_PER_EXPORT = 512
SPANS_PER_TRACE = 4
LATENCY_GOAL_S = 1.0
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "gemini-1.5-pro")
SCOPE = InstrumentationScope("bench.otlp_burst")


@dataclass
class Burst:
    exporters: int = EXPORTERS
    spans: int = 0
    seconds: float = 0.0
    accepted_latency_s: list[float] = field(default_factory=list)
    refused_latency_s: list[float] = field(default_factory=list)
    refused_without_retry_after: int = 0
    other_statuses: dict[int, int] = field(default_factory=dict)
    retry_after_s: dict[str, int] = field(default_factory=dict)  # value -> how many
    exports_failed: int = 0
    spans_stored: int = 0
    accepted_p50_s: float | None = None
    accepted_p99_s: float | None = None
    accepted_max_s: float | None = None
    refused_p99_s: float | None = None

    @property
    def refused(self) -> int:
        return len(self.refused_latency_s)

    def ok(self) -> bool:
        return (
            self.accepted_p99_s is not None
            and self.accepted_p99_s <= LATENCY_GOAL_S
            and self.delivered()
        )

    def delivered(self) -> bool:
        """Every span stored, no export given up, every refusal with Retry-After."""
        return (
            self.refused_without_retry_after == 0
            and self.exports_failed == 0
            and self.spans_stored == self.spans
        )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def make_exports(start_ns: int) -> list[list[list[ReadableSpan]]]:
    """Per exporter, its exports: GenAI chat spans, four per trace, the first a root."""
    resource = Resource.create({"service.name": "bench-burst"})
    plan: list[list[list[ReadableSpan]]] = []
    n = 0
    for exporter in range(EXPORTERS):
        exports = []
        for _ in range(EXPORTS_EACH):
            batch = []
            for _ in range(SPANS_PER_EXPORT):
                trace_id = (7 << 100) + n // SPANS_PER_TRACE + 1
                root_id = (3 << 56) + n // SPANS_PER_TRACE + 1
                is_root = n % SPANS_PER_TRACE == 0
                context = SpanContext(
                    trace_id,
                    root_id if is_root else (5 << 56) + n,
                    is_remote=False,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
                parent = None if is_root else SpanContext(trace_id, root_id, is_remote=False)
                model = MODELS[n % len(MODELS)]
                begin = start_ns + n * 1_000_000
                batch.append(
                    ReadableSpan(
                        f"chat {model}",
                        context=context,
                        parent=parent,
                        resource=resource,
                        attributes={
                            "gen_ai.operation.name": "chat",
                            "gen_ai.request.model": model,
                            "gen_ai.usage.input_tokens": 200 + n % 2000,
                            "gen_ai.usage.output_tokens": 50 + n % 400,
                            "service.instance": f"exporter-{exporter}",
                        },
                        kind=SpanKind.CLIENT,
                        start_time=begin,
                        end_time=begin + 300_000_000,
                        instrumentation_scope=SCOPE,
                    )
                )
                n += 1
            exports.append(batch)
        plan.append(exports)
    return plan


def run_burst(url: str, plan: list[list[list[ReadableSpan]]]) -> Burst:
    """Every exporter sends its exports one after the other, all exporters starting at once."""
    burst = Burst(spans=sum(len(batch) for exports in plan for batch in exports))
    lock = threading.Lock()
    ready = threading.Barrier(len(plan) + 1)

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        seconds = response.elapsed.total_seconds()
        with lock:
            if response.status_code == 200:
                burst.accepted_latency_s.append(seconds)
            elif response.status_code in (429, 503):
                burst.refused_latency_s.append(seconds)
                after = response.headers.get("retry-after")
                if after is None:
                    burst.refused_without_retry_after += 1
                else:
                    burst.retry_after_s[after] = burst.retry_after_s.get(after, 0) + 1
            else:
                code = response.status_code
                burst.other_statuses[code] = burst.other_statuses.get(code, 0) + 1

    def exporter(exports: list[list[ReadableSpan]]) -> None:
        session = requests.Session()
        session.hooks["response"].append(record)
        client = OTLPSpanExporter(endpoint=f"{url}/v1/traces", session=session)
        try:
            ready.wait()
            for batch in exports:
                if client.export(batch) is not SpanExportResult.SUCCESS:
                    with lock:
                        burst.exports_failed += 1
        finally:
            client.shutdown()

    threads = [threading.Thread(target=exporter, args=(exports,)) for exports in plan]
    # The exporter logs each retry; the counts above say it all.
    exporter_log = logging.getLogger("opentelemetry.exporter")
    level = exporter_log.level
    exporter_log.setLevel(logging.CRITICAL)
    try:
        for thread in threads:
            thread.start()
        ready.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        burst.seconds = time.perf_counter() - began
    finally:
        exporter_log.setLevel(level)
    burst.accepted_p50_s = _percentile(burst.accepted_latency_s, 0.50)
    burst.accepted_p99_s = _percentile(burst.accepted_latency_s, 0.99)
    burst.accepted_max_s = max(burst.accepted_latency_s, default=None)
    burst.refused_p99_s = _percentile(burst.refused_latency_s, 0.99)
    return burst


def burst_lines(burst: Burst) -> list[str]:
    verdict = "met" if burst.ok() else "NOT met"
    p99 = "-" if burst.accepted_p99_s is None else f"{burst.accepted_p99_s:.3f} s"
    afters = ", ".join(f"{k} s: {v}" for k, v in sorted(burst.retry_after_s.items(), key=_num))
    return [
        f"goal: OTLP accepted-request p99 latency under {burst.exporters} concurrent exporters "
        f"<= {LATENCY_GOAL_S:.0f} s, the rest 503/429 with Retry-After, every span delivered: "
        f"{verdict} (p99 {p99}; {burst.refused:,} answered 503/429, "
        f"{burst.refused_without_retry_after} without Retry-After; "
        f"{burst.spans_stored:,} of {burst.spans:,} spans stored; "
        f"{burst.exports_failed} exports given up)",
        f"  burst: {burst.exporters} SDK exporters x {EXPORTS_EACH} exports of "
        f"{SPANS_PER_EXPORT} spans, over in {burst.seconds:.1f} s; accepted "
        f"requests: {len(burst.accepted_latency_s):,}, p50 {_s(burst.accepted_p50_s)}, "
        f"max {_s(burst.accepted_max_s)}; refused ones answered in p99 "
        f"{_s(burst.refused_p99_s)}; Retry-After given: {afters or '-'}"
        + (f"; other statuses: {burst.other_statuses}" if burst.other_statuses else ""),
    ]


def _num(item: tuple[str, int]) -> float:
    try:
        return float(item[0])
    except ValueError:
        return math.inf


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"
