from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

# Every factory returns a dict of column values, usable as Model(**row). Keyword overrides
# replace defaults; an unknown keyword raises TypeError so that typos do not pass silently.

OPERATION_TYPES = ("chat", "search", "generation")
LLM_MODELS = ("gpt-4", "gpt-3.5-turbo", "claude-3")
PROVIDERS = {"gpt-4": "openai", "gpt-3.5-turbo": "openai", "claude-3": "anthropic"}
ERROR_TYPES = ("TimeoutError", "RateLimitError", "ContentPolicyViolation", "500")


def generate_trace_id() -> str:
    """W3C trace-context trace-id: 32 lowercase hex digits, not all zeros."""
    return f"{random.randrange(1, 1 << 128):032x}"


def generate_span_id() -> str:
    """W3C trace-context span (parent-)id: 16 lowercase hex digits, not all zeros."""
    return f"{random.randrange(1, 1 << 64):016x}"


def _now() -> datetime:
    return datetime.now(UTC)


def _recent(max_age: timedelta = timedelta(hours=1)) -> datetime:
    return _now() - timedelta(seconds=random.uniform(0, max_age.total_seconds()))


def _usd(low: float, high: float) -> Decimal:
    return Decimal(f"{random.uniform(low, high):.6f}")


def _merge(defaults: dict[str, Any], overrides: dict[str, Any], factory: str) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"{factory}() got unknown column(s): {', '.join(unknown)}")
    return {**defaults, **overrides}


def _ended(overrides: dict[str, Any], low_ms: int, high_ms: int) -> dict[str, Any]:
    """started_at, duration_ms and ended_at that agree, whichever of them were overridden.

    An explicit ended_at=None means "still running": duration_ms then stays None too.
    """
    started_at = overrides.get("started_at") or _recent()
    if "ended_at" in overrides and overrides["ended_at"] is None:
        return {"started_at": started_at, "ended_at": None, "duration_ms": None}
    ended_at = overrides.get("ended_at")
    duration_ms = overrides.get("duration_ms")
    if duration_ms is None:
        if ended_at is not None:
            duration_ms = int((ended_at - started_at) / timedelta(milliseconds=1))
        else:
            duration_ms = random.randint(low_ms, high_ms)
    if ended_at is None:
        ended_at = started_at + timedelta(milliseconds=duration_ms)
    return {"started_at": started_at, "duration_ms": duration_ms, "ended_at": ended_at}


def create_trace(**overrides: Any) -> dict[str, Any]:
    """A trace that is still running (no end, no totals)."""
    defaults: dict[str, Any] = {
        "trace_id": generate_trace_id(),
        "started_at": _recent(),
        "ended_at": None,
        "duration_ms": None,
        "name": "chat.request",
        "operation_type": random.choice(OPERATION_TYPES),
        "status": "running",
        "user_id": uuid4(),
        "session_id": f"session-{uuid4().hex[:12]}",
        "kb_id": uuid4(),
        "total_tokens": None,
        "cost_usd": None,
        "error_type": None,
        "error_message": None,
        "attributes": {"service.name": "kb-api"},
    }
    return _merge(defaults, overrides, "create_trace")


def create_completed_trace(**overrides: Any) -> dict[str, Any]:
    timing = _ended(overrides, 100, 5000)
    completed = {
        **timing,
        "status": "ok",
        "total_tokens": random.randint(100, 2000),
        "cost_usd": _usd(0.0001, 0.5),
    }
    return create_trace(**{**completed, **overrides, **timing})


def create_failed_trace(**overrides: Any) -> dict[str, Any]:
    timing = _ended(overrides, 50, 30000)
    error_type = random.choice(ERROR_TYPES)
    failed = {
        **timing,
        "status": "error",
        "error_type": error_type,
        "error_message": f"{error_type}: upstream call failed",
    }
    return create_trace(**{**failed, **overrides, **timing})


def create_span(**overrides: Any) -> dict[str, Any]:
    """A completed span of type 'chain'; the type-specific columns are left empty."""
    timing = _ended(overrides, 1, 2000)
    defaults: dict[str, Any] = {
        "trace_id": generate_trace_id(),
        "span_id": generate_span_id(),
        "parent_span_id": None,
        **timing,
        "name": "pipeline.step",
        "span_type": "chain",
        "operation_name": None,
        "status": "ok",
        "provider": None,
        "model": None,
        "input_tokens": None,
        "output_tokens": None,
        "time_to_first_token_ms": None,
        "cost_usd": None,
        "kb_id": None,
        "documents_retrieved": None,
        "error_type": None,
        "error_message": None,
        "attributes": {},
        "links": [],
    }
    return _merge(defaults, {**overrides, **timing}, "create_span")


def create_span_event(**overrides: Any) -> dict[str, Any]:
    """A tool-call event of a span that started an hour ago."""
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    defaults: dict[str, Any] = {
        "trace_id": generate_trace_id(),
        "span_id": generate_span_id(),
        "span_started_at": started,
        "event_index": 0,
        "occurred_at": started + timedelta(milliseconds=random.randint(0, 2000)),
        "name": "gen_ai.tool.message",
        "attributes": {"gen_ai.tool.name": "search"},
    }
    return _merge(defaults, overrides, "create_span_event")


def create_llm_span(**overrides: Any) -> dict[str, Any]:
    model = overrides.get("model") or random.choice(LLM_MODELS)
    timing = _ended(overrides, 100, 3000)
    llm = {
        **timing,
        "name": f"chat {model}",
        "span_type": "llm",
        "operation_name": "chat",
        "provider": PROVIDERS.get(model, "openai"),
        "model": model,
        "input_tokens": random.randint(50, 4000),
        "output_tokens": random.randint(10, 1000),
        "time_to_first_token_ms": random.randint(0, max(timing["duration_ms"] or 500, 0)),
        "cost_usd": _usd(0.00001, 0.2),
        "attributes": {"gen_ai.request.temperature": 0.2},
    }
    return create_span(**{**llm, **overrides, **timing})


def create_retrieval_span(**overrides: Any) -> dict[str, Any]:
    retrieval = {
        "name": "retrieve documents",
        "span_type": "retrieval",
        "kb_id": uuid4(),
        "documents_retrieved": random.randint(0, 20),
        "attributes": {"retrieval.top_k": 10},
    }
    return create_span(**{**retrieval, **overrides})


def create_chat_message(**overrides: Any) -> dict[str, Any]:
    """An assistant answer with one source and one citation into it."""
    document_id = str(uuid4())
    defaults: dict[str, Any] = {
        "id": uuid4(),
        "created_at": _recent(),
        "session_id": f"session-{uuid4().hex[:12]}",
        "trace_id": generate_trace_id(),
        "user_id": uuid4(),
        "kb_id": uuid4(),
        "role": "assistant",
        "content": "The refund window is 30 days [1].",
        "model": random.choice(LLM_MODELS),
        "token_count": random.randint(5, 800),
        "latency_ms": random.randint(200, 8000),
        "sources": [{"document_id": document_id, "chunk": 3, "score": 0.87, "title": "Policy"}],
        "citations": [{"marker": "[1]", "document_id": document_id, "chunk": 3}],
        "attributes": {},
    }
    return _merge(defaults, overrides, "create_chat_message")


def create_document_event(**overrides: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "id": uuid4(),
        "created_at": _recent(),
        "document_id": uuid4(),
        "kb_id": uuid4(),
        "trace_id": None,
        "event_type": "embed",
        "status": "ok",
        "duration_ms": random.randint(10, 60000),
        "chunks_count": random.randint(1, 400),
        "token_count": random.randint(100, 200000),
        "file_size_bytes": random.randint(1_000, 50_000_000),
        "error_message": None,
        "attributes": {"parser": "pdf"},
    }
    return _merge(defaults, overrides, "create_document_event")


def bucket_start(moment: datetime, granularity: str) -> datetime:
    """Start of the UTC hour, day or (Monday) week containing moment."""
    moment = moment.astimezone(UTC)
    start = moment.replace(minute=0, second=0, microsecond=0)
    if granularity == "hour":
        return start
    start = start.replace(hour=0)
    if granularity == "day":
        return start
    if granularity == "week":
        return start - timedelta(days=start.weekday())
    raise ValueError(f"unknown granularity {granularity!r}")


def _dimension_value(dimension_type: str) -> str:
    if dimension_type == "overall":
        return ""
    if dimension_type == "operation_type":
        return random.choice(OPERATION_TYPES)
    if dimension_type == "model":
        return random.choice(LLM_MODELS)
    if dimension_type == "provider":
        return random.choice(sorted(set(PROVIDERS.values())))
    return str(uuid4())


def create_metrics_aggregate(**overrides: Any) -> dict[str, Any]:
    """Consistent statistics: min <= p50 <= p95 <= p99 <= max, avg = sum / count."""
    granularity = overrides.get("granularity", "hour")
    dimension_type = overrides.get("dimension_type", "overall")
    count = overrides.get("count", random.randint(1, 500))
    low = round(random.uniform(10, 200), 3)
    p50 = round(low + random.uniform(0, 300), 3)
    p95 = round(p50 + random.uniform(0, 1000), 3)
    p99 = round(p95 + random.uniform(0, 2000), 3)
    high = round(p99 + random.uniform(0, 500), 3)
    # Statistics stay computable when a test overrides count with something invalid.
    total = round(p50 * count, 3) if isinstance(count, int) else p50
    created_at = _now()
    defaults: dict[str, Any] = {
        "bucket_time": bucket_start(
            _now() - timedelta(hours=1), granularity if granularity in ("day", "week") else "hour"
        ),
        "granularity": granularity,
        "metric_type": "trace.duration_ms",
        "dimension_type": dimension_type,
        "dimension_value": _dimension_value(dimension_type),
        "count": count,
        "sum_value": total,
        "min_value": low,
        "max_value": high,
        "avg_value": total / count if isinstance(count, int) and count > 0 else None,
        "p50_value": p50,
        "p95_value": p95,
        "p99_value": p99,
        "created_at": created_at,
        "updated_at": created_at,
    }
    return _merge(defaults, overrides, "create_metrics_aggregate")


def create_provider_sync_status(**overrides: Any) -> dict[str, Any]:
    now = _now()
    defaults: dict[str, Any] = {
        "id": uuid4(),
        "provider_name": f"langfuse-{uuid4().hex[:8]}",
        "status": "synced",
        "synced_through": now - timedelta(minutes=5),
        "last_attempt_at": now - timedelta(minutes=1),
        "last_success_at": now - timedelta(minutes=1),
        "records_synced": random.randint(0, 100_000),
        "consecutive_failures": 0,
        "last_error": None,
        "created_at": now - timedelta(days=3),
        "updated_at": now,
    }
    return _merge(defaults, overrides, "create_provider_sync_status")


def create_traces_for_aggregation(
    *,
    count: int = 10,
    operation_type: str | None = None,
    time_range_hours: int = 1,
    user_id: UUID | None = None,
    kb_id: UUID | None = None,
) -> list[dict[str, Any]]:
    """Completed traces spread evenly over the last time_range_hours."""
    base_time = _now() - timedelta(hours=time_range_hours)
    step = timedelta(hours=time_range_hours) / max(count, 1)
    return [
        create_completed_trace(
            operation_type=operation_type or random.choice(OPERATION_TYPES),
            started_at=base_time + i * step,
            user_id=user_id or uuid4(),
            kb_id=kb_id or uuid4(),
            duration_ms=random.randint(100, 5000),
            total_tokens=random.randint(100, 2000),
        )
        for i in range(count)
    ]


def create_llm_spans_for_aggregation(
    *,
    count: int = 10,
    model: str | None = None,
    trace_id: str | None = None,
) -> list[dict[str, Any]]:
    """LLM spans for the model dimension; all in one trace when trace_id is given."""
    return [
        create_llm_span(
            trace_id=trace_id or generate_trace_id(),
            model=model or random.choice(LLM_MODELS),
            duration_ms=random.randint(100, 3000),
        )
        for _ in range(count)
    ]
