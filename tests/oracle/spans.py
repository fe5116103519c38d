from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from tests.oracle.model import BULK, OtlpEvent, OtlpSpan, ns_to_datetime

# Building blocks of generated traces: span versions as an instrumented RAG application would
# export them, and their conversion to the bulk writer's items. Everything here is the sending
# side; the oracle never calls it.

MS = 1_000_000  # nanoseconds
SECOND = 1000 * MS

# (model, provider names an instrumentation may write): model_prices has these models; the names
# include aliases and capitalisations that canonicalise to the price row's provider.
KNOWN_MODELS = (
    ("gpt-4o", ("openai", "azure.ai.openai", "OpenAI")),
    ("gpt-4o-mini", ("openai", "azure-openai")),
    ("claude-3-5-sonnet", ("anthropic", "Anthropic")),
    ("claude-3-haiku", ("anthropic",)),
    ("gemini-1.5-flash", ("gcp.vertex_ai", "gcp.gemini", "google")),
    ("gemini-1.5-pro", ("google", "vertex_ai")),
    ("gpt-4.1-mini", ("openai",)),
)
# No price row for these: unknown models, a model name in another case, a known model under
# another provider, an alias whose canonical provider has no rows.
UNKNOWN_MODELS = (
    ("llama-3.1-70b-instruct", "meta"),
    ("mistral-large-2411", "mistralai"),
    ("gpt-5-preview", "openai"),
    ("GPT-4o", "openai"),
    ("gpt-4o", "anthropic"),
    ("command-r-plus", "cohere"),
)
EMBEDDING_MODELS = (("text-embedding-3-small", "openai"), ("text-embedding-3-large", "openai"))
LLM_OPERATIONS = ("chat", "chat", "text_completion", "generate_content")
PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.provider.name", "gen_ai.system")
# Time to first token in seconds, under the current and the older attribute name (the same value
# under both, so whichever the endpoint reads gives the same column).
TTFT_KEYS = ("gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token")
# Stream chunks recorded as span events (OpenLLMetry's current and earlier names).
CHUNK_EVENT = "gen_ai.content.completion.chunk"
CHUNK_EVENTS = (CHUNK_EVENT, "llm.content.completion.chunk")


@dataclass
class Ids:
    rng: random.Random
    used: set[str] = field(default_factory=set)

    def _hex(self, bits: int) -> str:
        while True:
            value = f"{self.rng.getrandbits(bits):0{bits // 4}x}"
            if value.strip("0") and value not in self.used:
                self.used.add(value)
                return value

    def trace(self) -> str:
        return self._hex(128)

    def span(self) -> str:
        return self._hex(64)

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)


@dataclass(frozen=True)
class Usage:
    input: int | None
    output: int | None


def root_span(
    trace_id: str,
    span_id: str,
    name: str,
    start_ns: int,
    end_ns: int | None,
    *,
    operation: str | None,
    user: uuid.UUID | None,
    session: str | None,
    kb: uuid.UUID | None,
    extra: dict[str, Any] | None = None,
    status: str = "unset",
    message: str | None = None,
    events: tuple[OtlpEvent, ...] = (),
    resource: dict[str, Any] | None = None,
) -> OtlpSpan:
    attributes: dict[str, Any] = {}
    if operation is not None:
        attributes["gen_ai.operation.name"] = operation
    if user is not None:
        attributes["user.id"] = str(user)
    if session is not None:
        attributes["session.id"] = session
    if kb is not None:
        attributes["gen_ai.data_source.id"] = str(kb)
    attributes.update(extra or {})
    return OtlpSpan(
        trace_id,
        span_id,
        None,
        name,
        start_ns,
        end_ns,
        attributes,
        events,
        status,
        message,
        resource or {"service.name": "rag-api"},
    )


def llm_attributes(
    rng: random.Random,
    model: str | None,
    provider: str | None,
    usage: Usage,
    ttft_ms: int | None,
    operation: str | None = None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation or rng.choice(LLM_OPERATIONS)}
    if model is not None:
        attributes["gen_ai.request.model"] = model
        if rng.random() < 0.3:
            attributes["gen_ai.response.model"] = f"{model}-2024-08-06"
    if provider is not None:
        attributes[rng.choice(PROVIDER_KEYS)] = provider
    if usage.input is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.input
    if usage.output is not None:
        attributes["gen_ai.usage.output_tokens"] = usage.output
    if ttft_ms is not None:
        for key in TTFT_KEYS:
            attributes[key] = ttft_ms / 1000
        attributes["gen_ai.request.stream"] = True
    attributes["gen_ai.request.temperature"] = round(rng.random(), 2)
    return attributes


def child_span(
    trace_id: str,
    span_id: str,
    parent_id: str,
    name: str,
    start_ns: int,
    end_ns: int | None,
    attributes: dict[str, Any],
    *,
    status: str = "unset",
    message: str | None = None,
    events: tuple[OtlpEvent, ...] = (),
) -> OtlpSpan:
    return OtlpSpan(
        trace_id, span_id, parent_id, name, start_ns, end_ns, attributes, events, status, message
    )


def exception_event(time_ns: int, kind: str, message: str) -> OtlpEvent:
    return OtlpEvent(
        "exception",
        time_ns,
        {
            "exception.type": kind,
            "exception.message": message,
            "exception.stacktrace": f"Traceback (most recent call last):\n  ...\n{kind}: {message}",
        },
    )


def chunk_events(
    start_ns: int, first_ms: int, end_ns: int | None, count: int, name: str = CHUNK_EVENT
) -> tuple[OtlpEvent, ...]:
    """A stream's chunks as span events, the first exactly first_ms after the start."""
    first = start_ns + first_ms * MS
    last = end_ns if end_ns is not None else first + count * 40 * MS
    step = max(1, (last - first) // max(1, count))
    return tuple(
        OtlpEvent(name, first + i * step, {"gen_ai.choice.index": 0}) for i in range(count)
    )


def moved(span: OtlpSpan, **changes: Any) -> OtlpSpan:
    """Another version of the span; a new start moves its events along with it."""
    shift = changes.get("start_ns", span.start_ns) - span.start_ns
    if shift and "events" not in changes:
        changes["events"] = tuple(replace(e, time_ns=e.time_ns + shift) for e in span.events)
    return replace(span, **changes)


# --- the bulk writer's items ------------------------------------------------------------------

_SPAN_TYPES = {
    "chat": "llm",
    "text_completion": "llm",
    "generate_content": "llm",
    "embeddings": "embedding",
    "retrieval": "retrieval",
    "rerank": "rerank",
    "execute_tool": "tool",
    "invoke_agent": "agent",
    "search": "retrieval",
}


def bulk_span(
    span: OtlpSpan, rng: random.Random, cost: Any = None, duration_ms: int | None = None
) -> dict[str, Any]:
    """The span as an application using the bulk writer sends it (its own column values)."""
    a = span.attributes
    operation = a.get("gen_ai.operation.name")
    model = a.get("gen_ai.request.model")
    span_type = _SPAN_TYPES.get(operation or "", "llm" if model else "other")
    provider = a.get("gen_ai.provider.name", a.get("gen_ai.system"))
    ttft_ms = round(a[TTFT_KEYS[0]] * 1000) if TTFT_KEYS[0] in a else None
    chunks = [e.time_ns for e in span.events if e.name in CHUNK_EVENTS]
    if ttft_ms is None and chunks:
        ttft_ms = (min(chunks) - span.start_ns) // MS
    item: dict[str, Any] = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_id,
        "started_at": ns_to_datetime(span.start_ns),
        "ended_at": ns_to_datetime(span.end_ns) if span.end_ns is not None else None,
        "name": span.name,
        "span_type": span_type,
        "operation_name": operation,
        "status": _status(span),
        "provider": provider,
        "model": model,
        "input_tokens": a.get("gen_ai.usage.input_tokens"),
        "output_tokens": a.get("gen_ai.usage.output_tokens"),
        "time_to_first_token_ms": ttft_ms,
        "kb_id": a.get("gen_ai.data_source.id"),
        "error_type": _error(span)[0],
        "error_message": _error(span)[1],
        "attributes": {"service.name": span.resource.get("service.name", "rag-api"), "path": BULK},
    }
    if cost is not None:
        item["cost_usd"] = cost
    if duration_ms is not None:
        item["duration_ms"] = duration_ms
    # An application leaves out what it does not have, or passes None: both mean "no value".
    return {k: v for k, v in item.items() if v is not None or rng.random() < 0.5}


def bulk_trace(
    root: OtlpSpan,
    rng: random.Random,
    *,
    total_tokens: int | None,
    cost: Any,
    duration_ms: int | None = None,
) -> dict[str, Any]:
    a = root.attributes
    operation = a.get("gen_ai.operation.name") or "chain"
    item: dict[str, Any] = {
        "trace_id": root.trace_id,
        "started_at": ns_to_datetime(root.start_ns),
        "ended_at": ns_to_datetime(root.end_ns) if root.end_ns is not None else None,
        "name": root.name,
        "operation_type": operation,
        "status": _status(root),
        "user_id": a.get("user.id"),
        "session_id": a.get("session.id"),
        "kb_id": a.get("gen_ai.data_source.id"),
        "total_tokens": total_tokens,
        "cost_usd": cost,
        "error_type": _error(root)[0],
        "error_message": _error(root)[1],
        "attributes": {"service.name": "rag-api", "path": BULK},
    }
    if duration_ms is not None:
        item["duration_ms"] = duration_ms
    return {k: v for k, v in item.items() if v is not None or rng.random() < 0.5}


def _status(span: OtlpSpan) -> str:
    if span.status == "error":
        return "error"
    return "ok" if span.end_ns is not None else "running"


def _error(span: OtlpSpan) -> tuple[str | None, str | None]:
    if span.status != "error":
        return None, None
    kind = span.attributes.get("error.type")
    message = span.status_message
    for event in span.events:
        if event.name == "exception":
            kind = kind or event.attributes.get("exception.type")
            message = message or event.attributes.get("exception.message")
            break
    return kind, message
