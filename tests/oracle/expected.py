from __future__ import annotations

import string
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tests.oracle.model import (
    INT4_MAX,
    JSON,
    BulkExport,
    Export,
    OtlpExport,
    OtlpSpan,
    Traffic,
    ns_to_datetime,
)

# The oracle's picture of the raw rows, computed from what was sent and the rules the store
# promises, never from the store's rows. Only model_prices is read from the database, once, as
# configuration.

MICRO = Decimal("0.000001")
MILLION = Decimal(1_000_000)
COST_LIMIT = Decimal(10_000)  # numeric(10, 6)
MS = timedelta(milliseconds=1)
RETENTION = timedelta(days=30)
FUTURE_LIMIT = timedelta(hours=1)
# How far from the time policy's limits every generated time must be, so that the verdict does
# not depend on when exactly the store looked at its clock.
POLICY_MARGIN = timedelta(minutes=20)

# gen_ai.operation.name -> span type, for the operation names the generator uses.
SPAN_TYPES = {
    "chat": "llm",
    "text_completion": "llm",
    "generate_content": "llm",
    "embeddings": "embedding",
    "retrieval": "retrieval",
    "search": "retrieval",
    "rerank": "rerank",
    "execute_tool": "tool",
    "invoke_agent": "agent",
}
# Span events that mark a streamed chunk: without a time-to-first-token attribute, the first
# one after the start gives it.
CHUNK_EVENTS = ("gen_ai.content.completion.chunk", "llm.content.completion.chunk")
# Provider names -> the provider of model_prices rows (lowercased ASCII, then aliases).
PROVIDER_ALIASES = {
    "azure.ai.openai": "openai",
    "az.ai.openai": "openai",
    "azure_openai": "openai",
    "azure-openai": "openai",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "vertex_ai": "google",
    "vertexai": "google",
    "gemini": "google",
    "google_genai": "google",
    "bedrock": "aws.bedrock",
    "amazon_bedrock": "aws.bedrock",
    "mistral": "mistral_ai",
    "mistralai": "mistral_ai",
}
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


@dataclass(frozen=True)
class Price:
    model: str
    provider: str
    effective_from: datetime
    input: Decimal
    output: Decimal


@dataclass
class SpanRow:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    started_at: datetime
    ended_at: datetime | None
    duration_ms: int | None
    span_type: str
    status: str
    provider: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    time_to_first_token_ms: int | None
    cost_usd: Decimal | None
    kb_id: uuid.UUID | None
    name: str
    error_type: str | None
    error_message: str | None
    # what a root contributes to its trace (OTLP)
    operation_type: str | None = None
    user_id: uuid.UUID | None = None
    session_id: str | None = None
    seq: int = 0  # delivery order, for ties between roots


@dataclass
class TraceRow:
    trace_id: str
    started_at: datetime
    ended_at: datetime | None
    duration_ms: int | None
    name: str
    operation_type: str
    status: str
    user_id: uuid.UUID | None
    session_id: str | None
    kb_id: uuid.UUID | None
    total_tokens: int | None
    cost_usd: Decimal | None
    error_type: str | None
    error_message: str | None


@dataclass
class DocumentRow:
    id: uuid.UUID
    created_at: datetime
    event_type: str
    status: str
    duration_ms: int | None


@dataclass
class Refusals:
    """What the store must refuse, per export: JSON exports report a count, bulk exports the
    (kind, index) of each refused item."""

    json_counts: dict[int, int] = field(default_factory=dict)  # id(export) -> rejected spans
    # id(export) -> traces whose total the export pushed past its column: a warning names each
    json_warnings: dict[int, set[str]] = field(default_factory=dict)
    bulk_items: dict[int, set[tuple[str, int]]] = field(default_factory=dict)
    spans: set[tuple[str, str]] = field(default_factory=set)
    traces: set[str] = field(default_factory=set)


def canonical_provider(provider: str | None) -> str | None:
    if provider is None:
        return None
    name = provider.translate(_LOWER)
    return PROVIDER_ALIASES.get(name, name)


def price_cost(
    prices: list[Price],
    model: str | None,
    provider: str | None,
    at: datetime,
    tokens_in: int | None,
    tokens_out: int | None,
) -> Decimal | None:
    if model is None or (tokens_in is None and tokens_out is None):
        return None
    wanted = canonical_provider(provider)
    rows = [p for p in prices if p.model == model and p.effective_from <= at]
    if wanted is not None:
        rows = [p for p in rows if p.provider == wanted]
    if not rows:
        return None
    latest = max(p.effective_from for p in rows)
    price = min((p for p in rows if p.effective_from == latest), key=lambda p: p.provider)
    total = (tokens_in or 0) * price.input + (tokens_out or 0) * price.output
    cost = (total / MILLION).quantize(MICRO, rounding=ROUND_HALF_UP)
    return cost if cost < COST_LIMIT else None


def duration_between(start: datetime, end: datetime | None) -> int | None:
    if end is None:
        return None
    duration = (end - start) // MS
    return duration if duration <= INT4_MAX else None


class Policy:
    """Spans, traces and document events must start (be created) at most an hour ahead and
    after the retention horizon."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        day = (now - RETENTION).replace(hour=0, minute=0, second=0, microsecond=0)
        self.horizon = day
        self.latest = now + FUTURE_LIMIT

    def accepts(self, started_at: datetime) -> bool:
        for limit in (self.horizon, self.now - RETENTION, self.latest):
            if abs(started_at - limit) < POLICY_MARGIN:
                raise AssertionError(f"generated time {started_at} is too close to {limit}")
        return self.horizon <= started_at <= self.latest


# --- OTLP spans -------------------------------------------------------------------------------


def otlp_row(span: OtlpSpan, prices: list[Price], seq: int) -> SpanRow:
    a = span.attributes
    operation = a.get("gen_ai.operation.name")
    model = a.get("gen_ai.request.model")
    provider = a.get("gen_ai.provider.name", a.get("gen_ai.system"))
    span_type = SPAN_TYPES.get(operation or "") or ("llm" if model is not None else "other")
    tokens_in = a.get("gen_ai.usage.input_tokens")
    tokens_out = a.get("gen_ai.usage.output_tokens")
    ttft = a.get("gen_ai.response.time_to_first_chunk", a.get("gen_ai.server.time_to_first_token"))
    ttft_ms = round(ttft * 1000) if ttft is not None else None
    chunks = [
        e.time_ns for e in span.events if e.name in CHUNK_EVENTS and e.time_ns >= span.start_ns
    ]
    if ttft_ms is None and chunks:
        # the generator puts a stream's first chunk a whole number of milliseconds after the start
        ttft_ms, rest = divmod(min(chunks) - span.start_ns, 1_000_000)
        assert rest == 0, "chunk event off the millisecond grid"
    started = ns_to_datetime(span.start_ns)
    ended = ns_to_datetime(span.end_ns) if span.end_ns else None
    duration = None
    if span.end_ns:
        duration = (span.end_ns - span.start_ns) // 1_000_000
        duration = duration if duration <= INT4_MAX else None
    error_type, message = a.get("error.type"), None
    if span.status == "error":
        status = "error"
        message = span.status_message or None
        exception = next((e for e in span.events if e.name == "exception"), None)
        if exception is not None:
            error_type = error_type or exception.attributes.get("exception.type")
            message = message or exception.attributes.get("exception.message")
    else:
        status = "ok" if span.end_ns else "running"
    kb = a.get("gen_ai.data_source.id")
    user = a.get("user.id")
    return SpanRow(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_id,
        started_at=started,
        ended_at=ended,
        duration_ms=duration,
        span_type=span_type,
        status=status,
        provider=provider,
        model=model,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        time_to_first_token_ms=ttft_ms,
        cost_usd=price_cost(prices, model, provider, started, tokens_in, tokens_out),
        kb_id=uuid.UUID(kb) if kb else None,
        name=span.name,
        error_type=error_type,
        error_message=message,
        operation_type=operation or span_type,
        user_id=uuid.UUID(user) if user else None,
        session_id=a.get("session.id"),
        seq=seq,
    )


def otlp_trace(
    trace_id: str, spans: Iterable[SpanRow], namer: SpanRow | None = None
) -> TraceRow | None:
    """The trace row of an OTLP trace. namer: the root whose report names the trace (see
    Oracle._name); by default the earliest root, the later delivery between equal starts."""
    spans = list(spans)
    roots = [s for s in spans if s.parent_span_id is None]
    if not roots:
        return None
    first = namer or min(roots, key=lambda s: (s.started_at, -s.seq))
    started = min(s.started_at for s in roots)
    ends = [s.ended_at for s in roots if s.ended_at is not None]
    ended = max(ends) if ends else None
    if any(s.status == "error" for s in roots):
        status = "error"
    elif any(s.ended_at is None for s in roots):
        status = "running"
    else:
        status = "ok"
    counted = [s for s in spans if s.input_tokens is not None or s.output_tokens is not None]
    tokens = sum((s.input_tokens or 0) + (s.output_tokens or 0) for s in counted)
    costs = [s.cost_usd for s in spans if s.cost_usd is not None]
    cost = sum(costs, Decimal(0)) if costs else None
    return TraceRow(
        trace_id=trace_id,
        started_at=started,
        ended_at=ended,
        duration_ms=duration_between(started, ended),
        name=first.name,
        operation_type=first.operation_type or first.span_type,
        status=status,
        user_id=first.user_id,
        session_id=first.session_id,
        kb_id=first.kb_id,
        total_tokens=tokens if counted and tokens <= INT4_MAX else None,
        cost_usd=cost if cost is not None and cost < COST_LIMIT else None,
        error_type=first.error_type,
        error_message=first.error_message,
    )


# --- bulk items -------------------------------------------------------------------------------


def _cost(value: Any) -> Decimal | None:
    if value is None:
        return None
    return Decimal(str(value)).quantize(MICRO, rounding=ROUND_HALF_UP)


def _uuid(value: Any) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value is not None else None


def bulk_span_row(item: dict[str, Any], prices: list[Price], seq: int) -> SpanRow:
    started, ended = item["started_at"], item.get("ended_at")
    cost = _cost(item.get("cost_usd"))
    if cost is None:
        cost = price_cost(
            prices,
            item.get("model"),
            item.get("provider"),
            started,
            item.get("input_tokens"),
            item.get("output_tokens"),
        )
    duration = item.get("duration_ms")
    return SpanRow(
        trace_id=item["trace_id"],
        span_id=item["span_id"],
        parent_span_id=item.get("parent_span_id"),
        started_at=started,
        ended_at=ended,
        duration_ms=duration if duration is not None else duration_between(started, ended),
        span_type=item["span_type"],
        status=item.get("status") or "running",
        provider=item.get("provider"),
        model=item.get("model"),
        input_tokens=item.get("input_tokens"),
        output_tokens=item.get("output_tokens"),
        time_to_first_token_ms=item.get("time_to_first_token_ms"),
        cost_usd=cost,
        kb_id=_uuid(item.get("kb_id")),
        name=item["name"],
        error_type=item.get("error_type"),
        error_message=item.get("error_message"),
        seq=seq,
    )


def bulk_trace_row(item: dict[str, Any]) -> TraceRow:
    started, ended = item["started_at"], item.get("ended_at")
    duration = item.get("duration_ms")
    return TraceRow(
        trace_id=item["trace_id"],
        started_at=started,
        ended_at=ended,
        duration_ms=duration if duration is not None else duration_between(started, ended),
        name=item["name"],
        operation_type=item["operation_type"],
        status=item.get("status") or "running",
        user_id=_uuid(item.get("user_id")),
        session_id=item.get("session_id"),
        kb_id=_uuid(item.get("kb_id")),
        total_tokens=item.get("total_tokens"),
        cost_usd=_cost(item.get("cost_usd")),
        error_type=item.get("error_type"),
        error_message=item.get("error_message"),
    )


# --- the store, delivery by delivery ----------------------------------------------------------


@dataclass
class Expected:
    traces: dict[str, TraceRow]
    spans: dict[tuple[str, str], SpanRow]
    documents: dict[tuple[uuid.UUID, datetime], DocumentRow]


class Oracle:
    def __init__(self, traffic: Traffic, prices: list[Price]) -> None:
        self.traffic = traffic
        self.prices = prices
        self.policy = Policy(traffic.now)
        self.spans: dict[tuple[str, str], SpanRow] = {}
        self.by_trace: dict[str, dict[str, SpanRow]] = {}
        self.otlp_traces: set[str] = set()
        self.bulk_traces: dict[str, TraceRow] = {}
        self.documents: dict[tuple[uuid.UUID, datetime], DocumentRow] = {}
        self.refusals = Refusals()
        self.seq = 0
        self.namers: dict[str, SpanRow] = {}

    def apply(self, export: Export) -> None:
        """One delivery, as the store must take it."""
        self.seq += 1
        if isinstance(export, OtlpExport):
            self._otlp(export)
        else:
            self._bulk(export)

    def _otlp(self, export: OtlpExport) -> None:
        refused = 0
        reports: list[SpanRow] = []
        for span in export.spans:
            if not self.policy.accepts(ns_to_datetime(span.start_ns)):
                refused += 1
                self.refusals.spans.add((span.trace_id, span.span_id))
                continue
            row = otlp_row(span, self.prices, self.seq)
            self.spans[(span.trace_id, span.span_id)] = row
            self.by_trace.setdefault(span.trace_id, {})[span.span_id] = row
            self.otlp_traces.add(span.trace_id)
            if row.parent_span_id is None:
                reports.append(row)
        self._name(reports)
        if export.path == JSON:
            self.refusals.json_counts[id(export)] = refused
            self.refusals.json_warnings[id(export)] = {
                trace_id
                for trace_id in {s.trace_id for s in export.spans}
                if self._past_range(trace_id)
            }

    def _name(self, reports: list[SpanRow]) -> None:
        """Which root's report names each trace, as the store decides (worker/ingest/traces.py
        from_roots): the earliest report of this request (the later one between equal starts)
        names the trace when it starts no later than every stored root; otherwise the trace
        keeps the name it had. So when the earliest root is re-sent with a later start, the
        trace keeps that root's earlier report until the new earliest root is sent again (a
        documented limit)."""
        earliest: dict[str, SpanRow] = {}
        for row in reports:
            seen = earliest.get(row.trace_id)
            if seen is None or row.started_at <= seen.started_at:
                earliest[row.trace_id] = row
        for trace_id, row in earliest.items():
            roots = [s for s in self.by_trace[trace_id].values() if s.parent_span_id is None]
            first = min(s.started_at for s in roots)
            if trace_id not in self.namers or row.started_at <= first:
                self.namers[trace_id] = row

    def _past_range(self, trace_id: str) -> bool:
        spans = list(self.by_trace.get(trace_id, {}).values())
        if otlp_trace(trace_id, spans) is None:
            return False
        tokens = sum((s.input_tokens or 0) + (s.output_tokens or 0) for s in spans)
        cost = sum((s.cost_usd for s in spans if s.cost_usd is not None), Decimal(0))
        return tokens > INT4_MAX or cost >= COST_LIMIT

    def _bulk(self, export: BulkExport) -> None:
        refused: set[tuple[str, int]] = set()
        for i, item in enumerate(export.traces):
            if not self.policy.accepts(item["started_at"]):
                refused.add(("trace", i))
                self.refusals.traces.add(item["trace_id"])
                continue
            self.bulk_traces[item["trace_id"]] = bulk_trace_row(item)
        for i, item in enumerate(export.spans):
            if not self.policy.accepts(item["started_at"]):
                refused.add(("span", i))
                self.refusals.spans.add((item["trace_id"], item["span_id"]))
                continue
            row = bulk_span_row(item, self.prices, self.seq)
            self.spans[(row.trace_id, row.span_id)] = row
            self.by_trace.setdefault(row.trace_id, {})[row.span_id] = row
        for i, item in enumerate(export.document_events):
            if not self.policy.accepts(item["created_at"]):
                refused.add(("document_event", i))
                continue
            row = DocumentRow(
                uuid.UUID(item["id"]),
                item["created_at"],
                item["event_type"],
                item["status"],
                item.get("duration_ms"),
            )
            self.documents[(row.id, row.created_at)] = row
        self.refusals.bulk_items[id(export)] = refused

    def expected(self) -> Expected:
        by_trace: dict[str, list[SpanRow]] = {}
        for row in self.spans.values():
            by_trace.setdefault(row.trace_id, []).append(row)
        traces = dict(self.bulk_traces)
        for trace_id in self.otlp_traces:
            trace = otlp_trace(trace_id, by_trace.get(trace_id, []), self.namers.get(trace_id))
            if trace is not None:
                traces[trace_id] = trace
        return Expected(traces, dict(self.spans), dict(self.documents))


def read_prices(rows: Iterable[tuple[Any, ...]]) -> list[Price]:
    return [
        Price(model, provider, effective_from.astimezone(UTC), Decimal(inp), Decimal(out))
        for model, provider, effective_from, inp, out in rows
    ]
