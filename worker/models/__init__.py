from __future__ import annotations

from worker.models.base import SCHEMA, Base
from worker.models.observability import (
    DIMENSION_TYPES,
    GRANULARITIES,
    MESSAGE_ROLES,
    SPAN_TYPES,
    SYNC_STATUSES,
    TRACE_STATUSES,
    ChatMessage,
    DocumentEvent,
    MetricsAggregate,
    ProviderSyncStatus,
    Span,
    Trace,
)

OBSERVABILITY_MODELS: tuple[type[Base], ...] = (
    Trace,
    Span,
    ChatMessage,
    DocumentEvent,
    MetricsAggregate,
    ProviderSyncStatus,
)

__all__ = [
    "DIMENSION_TYPES",
    "GRANULARITIES",
    "MESSAGE_ROLES",
    "OBSERVABILITY_MODELS",
    "SCHEMA",
    "SPAN_TYPES",
    "SYNC_STATUSES",
    "TRACE_STATUSES",
    "Base",
    "ChatMessage",
    "DocumentEvent",
    "MetricsAggregate",
    "ProviderSyncStatus",
    "Span",
    "Trace",
]
