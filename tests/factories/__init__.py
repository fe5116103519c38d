from __future__ import annotations

from tests.factories.observability_factory import (
    bucket_start,
    create_chat_message,
    create_completed_trace,
    create_document_event,
    create_failed_trace,
    create_llm_span,
    create_llm_spans_for_aggregation,
    create_metrics_aggregate,
    create_provider_sync_status,
    create_retrieval_span,
    create_span,
    create_span_event,
    create_trace,
    create_traces_for_aggregation,
    generate_span_id,
    generate_trace_id,
)
from tests.factories.worker_state_factory import create_aggregation_run, create_worker_lease

# Exported under this name too, as other factory modules may define chat messages of their own.
create_obs_chat_message = create_chat_message

__all__ = [
    "bucket_start",
    "create_aggregation_run",
    "create_chat_message",
    "create_completed_trace",
    "create_document_event",
    "create_failed_trace",
    "create_llm_span",
    "create_llm_spans_for_aggregation",
    "create_metrics_aggregate",
    "create_obs_chat_message",
    "create_provider_sync_status",
    "create_retrieval_span",
    "create_span",
    "create_span_event",
    "create_trace",
    "create_traces_for_aggregation",
    "create_worker_lease",
    "generate_span_id",
    "generate_trace_id",
]
