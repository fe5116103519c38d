from __future__ import annotations

from worker.models.base import SCHEMA, Base
from worker.models.granularities import GRANULARITIES
from worker.models.observability import (
    DIMENSION_TYPES,
    MESSAGE_ROLES,
    SPAN_TYPES,
    SYNC_STATUSES,
    TRACE_STATUSES,
    ChatMessage,
    DocumentEvent,
    MetricsAggregate,
    ProviderSyncStatus,
    Span,
    SpanEvent,
    Trace,
)
from worker.models.prices import ModelPrice
from worker.models.worker_state import (
    RUN_KINDS,
    RUN_STATUSES,
    AggregationRun,
    GranularityRow,
    StaleBucket,
    TraceExtent,
    WorkerLease,
)

OBSERVABILITY_MODELS: tuple[type[Base], ...] = (
    Trace,
    Span,
    SpanEvent,
    ChatMessage,
    DocumentEvent,
    MetricsAggregate,
    ProviderSyncStatus,
    AggregationRun,
    WorkerLease,
    TraceExtent,
    StaleBucket,
)

__all__ = [
    "DIMENSION_TYPES",
    "GRANULARITIES",
    "MESSAGE_ROLES",
    "OBSERVABILITY_MODELS",
    "RUN_KINDS",
    "RUN_STATUSES",
    "SCHEMA",
    "SPAN_TYPES",
    "SYNC_STATUSES",
    "TRACE_STATUSES",
    "AggregationRun",
    "Base",
    "ChatMessage",
    "DocumentEvent",
    "GranularityRow",
    "MetricsAggregate",
    "ModelPrice",
    "ProviderSyncStatus",
    "Span",
    "SpanEvent",
    "StaleBucket",
    "Trace",
    "TraceExtent",
    "WorkerLease",
]
