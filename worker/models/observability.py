from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Index, PrimaryKeyConstraint, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from worker.models.base import (
    Base,
    created_at_column,
    json_array_column,
    json_object_column,
    status_column,
    updated_at_column,
    uuid_pk,
)

# The tables, their check constraints and documentation are defined in sql/ (the source of
# truth); these classes map them. Indexes are declared so that comparing models with a migrated
# database (tests/migration) catches drift. Check constraints are verified from the SQL itself.

TRACE_STATUSES = ("running", "ok", "error")
SPAN_TYPES = ("llm", "embedding", "retrieval", "rerank", "tool", "agent", "chain", "other")
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
DIMENSION_TYPES = (
    "overall",
    "operation_type",
    "model",
    "kb",
    "user",
    "provider",
    "event_type",
)
SYNC_STATUSES = ("pending", "syncing", "synced", "failed", "disabled")


def _partial(name: str, column: str, time_column: str) -> Index:
    return Index(name, column, time_column, postgresql_where=text(f"{column} IS NOT NULL"))


class Trace(Base):
    __tablename__ = "traces"
    __table_args__ = (
        Index("traces_started_at_idx", "started_at"),
        Index("traces_operation_type_started_at_idx", "operation_type", "started_at"),
        _partial("traces_user_id_started_at_idx", "user_id", "started_at"),
        _partial("traces_kb_id_started_at_idx", "kb_id", "started_at"),
        _partial("traces_session_id_started_at_idx", "session_id", "started_at"),
    )

    trace_id: Mapped[str] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(primary_key=True)
    ended_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None]
    name: Mapped[str]
    operation_type: Mapped[str]
    status: Mapped[str] = status_column("running")
    user_id: Mapped[uuid.UUID | None]
    session_id: Mapped[str | None]
    kb_id: Mapped[uuid.UUID | None]
    total_tokens: Mapped[int | None]
    cost_usd: Mapped[Decimal | None]
    error_type: Mapped[str | None]
    error_message: Mapped[str | None]
    attributes: Mapped[dict[str, Any]] = json_object_column()


class Span(Base):
    __tablename__ = "spans"
    __table_args__ = (
        Index("spans_started_at_idx", "started_at"),
        _partial("spans_model_started_at_idx", "model", "started_at"),
        _partial("spans_kb_id_started_at_idx", "kb_id", "started_at"),
        Index(
            "spans_links_started_at_idx",
            "started_at",
            postgresql_where=text("links <> '[]'::jsonb"),
        ),
    )

    trace_id: Mapped[str] = mapped_column(primary_key=True)
    span_id: Mapped[str] = mapped_column(primary_key=True)
    parent_span_id: Mapped[str | None]
    started_at: Mapped[datetime] = mapped_column(primary_key=True)
    ended_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None]
    name: Mapped[str]
    span_type: Mapped[str]
    operation_name: Mapped[str | None]
    status: Mapped[str] = status_column("running")
    # LLM calls (gen_ai.provider.name, gen_ai.request.model, gen_ai.usage.*)
    provider: Mapped[str | None]
    model: Mapped[str | None]
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    time_to_first_token_ms: Mapped[int | None]
    cost_usd: Mapped[Decimal | None]
    # retrieval (gen_ai.data_source.id)
    kb_id: Mapped[uuid.UUID | None]
    documents_retrieved: Mapped[int | None]
    error_type: Mapped[str | None]
    error_message: Mapped[str | None]
    attributes: Mapped[dict[str, Any]] = json_object_column()
    # OpenTelemetry span links: [{"trace_id", "span_id", "attributes"[, "trace_state"]}, ...]
    links: Mapped[list[dict[str, Any]]] = json_array_column()


class SpanEvent(Base):
    """An OpenTelemetry span event, in the chunk of its span (partitioned on span_started_at)."""

    __tablename__ = "span_events"
    __table_args__ = (Index("span_events_name_span_started_at_idx", "name", "span_started_at"),)

    trace_id: Mapped[str] = mapped_column(primary_key=True)
    span_id: Mapped[str] = mapped_column(primary_key=True)
    span_started_at: Mapped[datetime] = mapped_column(primary_key=True)
    event_index: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime | None]
    name: Mapped[str]
    attributes: Mapped[dict[str, Any]] = json_object_column()


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        Index("chat_messages_created_at_idx", "created_at"),
        Index("chat_messages_session_id_created_at_idx", "session_id", "created_at"),
        Index(
            "chat_messages_trace_id_idx",
            "trace_id",
            postgresql_where=text("trace_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    created_at: Mapped[datetime] = created_at_column(primary_key=True)
    session_id: Mapped[str]
    trace_id: Mapped[str | None]
    user_id: Mapped[uuid.UUID | None]
    kb_id: Mapped[uuid.UUID | None]
    role: Mapped[str]
    content: Mapped[str]
    model: Mapped[str | None]
    token_count: Mapped[int | None]
    latency_ms: Mapped[int | None]
    sources: Mapped[list[dict[str, Any]]] = json_array_column()
    citations: Mapped[list[dict[str, Any]]] = json_array_column()
    attributes: Mapped[dict[str, Any]] = json_object_column()


class DocumentEvent(Base):
    __tablename__ = "document_events"
    __table_args__ = (
        Index("document_events_created_at_idx", "created_at"),
        Index("document_events_document_id_created_at_idx", "document_id", "created_at"),
        _partial("document_events_kb_id_created_at_idx", "kb_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    created_at: Mapped[datetime] = created_at_column(primary_key=True)
    document_id: Mapped[uuid.UUID]
    kb_id: Mapped[uuid.UUID | None]
    trace_id: Mapped[str | None]
    event_type: Mapped[str]
    status: Mapped[str]
    duration_ms: Mapped[int | None]
    chunks_count: Mapped[int | None]
    token_count: Mapped[int | None]
    file_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error_message: Mapped[str | None]
    attributes: Mapped[dict[str, Any]] = json_object_column()


class MetricsAggregate(Base):
    __tablename__ = "metrics_aggregates"
    __table_args__ = (
        # The worker's upsert target; see sql/incremental/006-metrics-aggregates.sql for the
        # column order and for why dimension_value is '' rather than NULL on overall rows.
        PrimaryKeyConstraint(
            "metric_type",
            "granularity",
            "dimension_type",
            "dimension_value",
            "bucket_time",
            name="metrics_aggregates_pkey",
        ),
        Index("metrics_aggregates_granularity_bucket_time_idx", "granularity", "bucket_time"),
    )

    bucket_time: Mapped[datetime]
    granularity: Mapped[str]
    metric_type: Mapped[str]
    dimension_type: Mapped[str] = mapped_column(
        default="overall", server_default=text("'overall'::text")
    )
    dimension_value: Mapped[str] = mapped_column(default="", server_default=text("''::text"))
    count: Mapped[int] = mapped_column(BigInteger)
    sum_value: Mapped[float | None]
    min_value: Mapped[float | None]
    max_value: Mapped[float | None]
    avg_value: Mapped[float | None]
    p50_value: Mapped[float | None]
    p95_value: Mapped[float | None]
    p99_value: Mapped[float | None]
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class ProviderSyncStatus(Base):
    __tablename__ = "provider_sync_status"
    __table_args__ = (
        UniqueConstraint("provider_name", name="provider_sync_status_provider_name_key"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    provider_name: Mapped[str]
    status: Mapped[str] = status_column("pending")
    synced_through: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    records_synced: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    consecutive_failures: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    last_error: Mapped[str | None]
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
