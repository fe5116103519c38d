from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any

# Attribute names read into columns, first match wins: the OpenTelemetry GenAI semantic
# conventions, then OpenInference, then the older llm.* / gen_ai.* names of earlier
# instrumentations. docs/ingest.md ("Mapping") documents the same table.
OPERATION = ("gen_ai.operation.name", "llm.request.type")
PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
MODEL = (
    "gen_ai.request.model",
    "gen_ai.response.model",
    "llm.model_name",
    "llm.request.model",
    "llm.response.model",
)
INPUT_TOKENS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
    "llm.usage.prompt_tokens",
)
OUTPUT_TOKENS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
# Seconds from the request to the first streamed chunk. gen_ai.server.time_to_first_token is
# a server-side metric in current GenAI conventions; earlier instrumentations set it on spans.
TIME_TO_FIRST_TOKEN_S = ("gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token")
DATA_SOURCE = ("gen_ai.data_source.id",)
USER = ("user.id", "enduser.id")
SESSION = ("session.id", "gen_ai.conversation.id", "conversation.id")
ERROR_TYPE = ("error.type",)
SPAN_KIND = ("openinference.span.kind", "traceloop.span.kind")
# Span events recorded for each streamed chunk (by OpenLLMetry, under its current and earlier
# name; the GenAI conventions define no such event yet). Without a usable attribute above, the
# first of them after the span start gives the time to first token.
STREAM_CHUNK_EVENTS = frozenset({"gen_ai.content.completion.chunk", "llm.content.completion.chunk"})
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"

# Every name read into a column from a span's attributes.
SPAN_KEYS = frozenset(
    OPERATION + PROVIDER + MODEL + INPUT_TOKENS + OUTPUT_TOKENS + TIME_TO_FIRST_TOKEN_S
    + DATA_SOURCE + USER + SESSION + ERROR_TYPE + SPAN_KIND
)  # fmt: skip

# gen_ai.operation.name (and llm.request.type) values -> spans.span_type.
OPERATION_TYPES = {
    "chat": "llm",
    "text_completion": "llm",
    "completion": "llm",
    "generate_content": "llm",
    "embeddings": "embedding",
    "embedding": "embedding",
    "execute_tool": "tool",
    "invoke_agent": "agent",
    "create_agent": "agent",
    "retrieval": "retrieval",
    "retrieve": "retrieval",
    "search": "retrieval",
    "rerank": "rerank",
    "reranking": "rerank",
}
# openinference.span.kind / traceloop.span.kind values (lowercased) -> spans.span_type.
SPAN_KINDS = {
    "llm": "llm",
    "embedding": "embedding",
    "retriever": "retrieval",
    "reranker": "rerank",
    "tool": "tool",
    "agent": "agent",
    "chain": "chain",
    "workflow": "chain",
    "task": "chain",
}

INT4_MAX = 2**31 - 1
# uuid5 namespaces for ids that are not UUIDs (traces.user_id and kb_id are uuid columns).
USER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:llm-observability-store:user.id")
KB_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:llm-observability-store:gen_ai.data_source.id")

_IDENTIFIER = re.compile(r"[^a-z0-9_]+")


def text_value(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def count_value(value: Any) -> int | None:
    """A token count: a non-negative int4, also given as a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        digits = value.strip()
        # str.isdigit() also accepts digits int() refuses, such as "\u00b2".
        if not (digits.isascii() and digits.isdigit()):
            return None
        value = int(digits)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= INT4_MAX else None


def seconds_to_ms(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    ms = value * 1000
    return round(ms) if 0 <= ms <= INT4_MAX else None


def first_chunk_ms(start_ns: int, chunk_times_ns: Iterable[int]) -> int | None:
    """Milliseconds from the span start to its first chunk event; events before it are ignored."""
    first = min((t for t in chunk_times_ns if t >= start_ns), default=None)
    if first is None:
        return None
    ms = (first - start_ns + 500_000) // 1_000_000
    return ms if ms <= INT4_MAX else None


def id_to_uuid(value: Any, namespace: uuid.UUID) -> tuple[uuid.UUID, bool] | None:
    """The UUID an id names, and whether it was one already (else a uuid5 of its text)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        return uuid.UUID(text), True
    except ValueError:
        return uuid.uuid5(namespace, text), False


def span_type(operation: str | None, kind: str | None, has_model: bool) -> str:
    if operation is not None and operation.lower() in OPERATION_TYPES:
        return OPERATION_TYPES[operation.lower()]
    if kind is not None and kind.lower() in SPAN_KINDS:
        return SPAN_KINDS[kind.lower()]
    return "llm" if has_model else "other"


def operation_type(operation: str | None, fallback: str) -> str:
    """traces.operation_type must match ^[a-z][a-z0-9_]*$."""
    if operation is None:
        return fallback
    normalized = _IDENTIFIER.sub("_", operation.strip().lower()).strip("_").lstrip("0123456789_")
    return normalized[:64] or fallback
