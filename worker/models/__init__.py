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
from worker.models.prices import ModelPrice
from worker.models.worker_state import (
    RUN_KINDS,
    RUN_STATUSES,
    AggregationRun,
    StaleBucket,
    TraceExtent,
    WorkerLease,
)

OBSERVABILITY_MODELS: tuple[type[Base], ...] = (
    Trace,
    Span,
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
    "MetricsAggregate",
    "ModelPrice",
    "ProviderSyncStatus",
    "Span",
    "StaleBucket",
    "Trace",
    "TraceExtent",
    "WorkerLease",
]
