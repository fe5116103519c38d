from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.factories import (
    create_aggregation_run,
    create_chat_message,
    create_completed_trace,
    create_document_event,
    create_llm_span,
    create_metrics_aggregate,
    create_provider_sync_status,
    create_worker_lease,
    generate_span_id,
)
from tests.observability_helpers import insert
from tests.sql_catalog import declared_names
from worker.models import (
    AggregationRun,
    Base,
    ChatMessage,
    DocumentEvent,
    MetricsAggregate,
    ModelPrice,
    ProviderSyncStatus,
    Span,
    Trace,
    TraceExtent,
    WorkerLease,
)

CHECK_VIOLATION = "23514"
NOT_NULL_VIOLATION = "23502"
UNIQUE_VIOLATION = "23505"
ZERO_TRACE_ID = "0" * 32
ZERO_SPAN_ID = "0" * 16


@dataclass(frozen=True)
class Case:
    constraint: str
    model: type[Base]
    factory: Callable[..., dict[str, Any]]
    overrides: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return self.factory(**self.overrides)


def create_trace_extent(**overrides: Any) -> dict[str, Any]:
    first = datetime(2026, 11, 30, tzinfo=UTC)
    row = {"trace_id": "a" * 32, "first_started_at": first, "last_started_at": first}
    return {**row, **overrides}


def _span_with_parent(parent: str) -> dict[str, Any]:
    return {"parent_span_id": parent}


def _span_parent_is_self() -> dict[str, Any]:
    span_id = generate_span_id()
    return {"span_id": span_id, "parent_span_id": span_id}


# One rejected row per check constraint in sql/. Where a bad value would also break another
# constraint that PostgreSQL checks first (it checks in name order), the overrides keep the
# other one satisfied, so the constraint under test is the one reported.
T, S, C, D, M, P = Trace, Span, ChatMessage, DocumentEvent, MetricsAggregate, ProviderSyncStatus
trace, span = create_completed_trace, create_llm_span
message, event = create_chat_message, create_document_event
aggregate, provider = create_metrics_aggregate, create_provider_sync_status
CASES = [
    Case("traces_trace_id_format", T, trace, {"trace_id": "A" * 32}),
    Case("traces_trace_id_not_zero", T, trace, {"trace_id": ZERO_TRACE_ID}),
    Case("traces_name_not_empty", T, trace, {"name": ""}),
    Case("traces_operation_type_format", T, trace, {"operation_type": "Chat Completion"}),
    Case("traces_status_valid", T, trace, {"status": "done"}),
    Case("traces_duration_ms_non_negative", T, trace, {"duration_ms": -1}),
    Case("traces_total_tokens_non_negative", T, trace, {"total_tokens": -5}),
    Case("traces_cost_usd_non_negative", T, trace, {"cost_usd": Decimal("-0.000001")}),
    Case("traces_session_id_not_empty", T, trace, {"session_id": ""}),
    Case("traces_attributes_is_object", T, trace, {"attributes": ["not", "an", "object"]}),
    Case("spans_trace_id_format", S, span, {"trace_id": "xyz"}),
    Case("spans_trace_id_not_zero", S, span, {"trace_id": ZERO_TRACE_ID}),
    Case("spans_span_id_format", S, span, {"span_id": "ABCDEF0123456789"}),
    Case("spans_span_id_not_zero", S, span, {"span_id": ZERO_SPAN_ID}),
    Case("spans_parent_span_id_format", S, span, _span_with_parent("1234")),
    Case("spans_parent_span_id_not_zero", S, span, _span_with_parent(ZERO_SPAN_ID)),
    Case("spans_parent_span_id_not_self", S, span, _span_parent_is_self()),
    Case("spans_name_not_empty", S, span, {"name": ""}),
    Case("spans_span_type_valid", S, span, {"span_type": "llm_call"}),
    Case("spans_status_valid", S, span, {"status": "failed"}),
    Case("spans_provider_not_empty", S, span, {"provider": ""}),
    Case("spans_model_not_empty", S, span, {"model": ""}),
    Case("spans_duration_ms_non_negative", S, span, {"duration_ms": -10}),
    Case("spans_input_tokens_non_negative", S, span, {"input_tokens": -1}),
    Case("spans_output_tokens_non_negative", S, span, {"output_tokens": -1}),
    Case("spans_time_to_first_token_ms_non_negative", S, span, {"time_to_first_token_ms": -1}),
    Case("spans_cost_usd_non_negative", S, span, {"cost_usd": Decimal("-1")}),
    Case("spans_documents_retrieved_non_negative", S, span, {"documents_retrieved": -3}),
    Case("spans_attributes_is_object", S, span, {"attributes": "text"}),
    Case("chat_messages_session_id_not_empty", C, message, {"session_id": ""}),
    Case("chat_messages_trace_id_format", C, message, {"trace_id": "trace-1"}),
    Case("chat_messages_trace_id_not_zero", C, message, {"trace_id": ZERO_TRACE_ID}),
    Case("chat_messages_role_valid", C, message, {"role": "bot"}),
    Case("chat_messages_model_not_empty", C, message, {"model": ""}),
    Case("chat_messages_token_count_non_negative", C, message, {"token_count": -1}),
    Case("chat_messages_latency_ms_non_negative", C, message, {"latency_ms": -1}),
    Case("chat_messages_sources_is_array", C, message, {"sources": {"id": 1}}),
    Case("chat_messages_citations_is_array", C, message, {"citations": "[1]"}),
    Case("chat_messages_attributes_is_object", C, message, {"attributes": [1, 2]}),
    Case("document_events_event_type_format", D, event, {"event_type": "Embed!"}),
    Case("document_events_status_valid", D, event, {"status": "done"}),
    Case("document_events_trace_id_format", D, event, {"trace_id": "F" * 32}),
    Case("document_events_trace_id_not_zero", D, event, {"trace_id": ZERO_TRACE_ID}),
    Case("document_events_duration_ms_non_negative", D, event, {"duration_ms": -1}),
    Case("document_events_chunks_count_non_negative", D, event, {"chunks_count": -1}),
    Case("document_events_token_count_non_negative", D, event, {"token_count": -1}),
    Case("document_events_file_size_bytes_non_negative", D, event, {"file_size_bytes": -1}),
    Case("document_events_attributes_is_object", D, event, {"attributes": 7}),
    Case("metrics_aggregates_granularity_valid", M, aggregate, {"granularity": "minute"}),
    Case("metrics_aggregates_metric_type_format", M, aggregate, {"metric_type": "Duration"}),
    Case(
        "metrics_aggregates_dimension_type_valid",
        M,
        aggregate,
        {"dimension_type": "team", "dimension_value": "core"},
    ),
    Case(
        "metrics_aggregates_dimension_value_matches_type",
        M,
        aggregate,
        {"dimension_type": "overall", "dimension_value": "gpt-4"},
    ),
    Case("metrics_aggregates_count_non_negative", M, aggregate, {"count": -1}),
    Case(
        "metrics_aggregates_min_not_above_max",
        M,
        aggregate,
        {"min_value": 10.0, "max_value": 5.0},
    ),
    Case(
        "metrics_aggregates_percentiles_ordered",
        M,
        aggregate,
        {"p50_value": 300.0, "p95_value": 200.0, "p99_value": 400.0},
    ),
    Case("provider_sync_status_provider_name_not_empty", P, provider, {"provider_name": ""}),
    Case("provider_sync_status_status_valid", P, provider, {"status": "ok"}),
    Case("provider_sync_status_records_synced_non_negative", P, provider, {"records_synced": -1}),
    Case(
        "provider_sync_status_consecutive_failures_non_negative",
        P,
        provider,
        {"consecutive_failures": -1},
    ),
    Case("aggregation_runs_kind_valid", AggregationRun, create_aggregation_run, {"kind": "x"}),
    Case(
        "aggregation_runs_granularity_valid",
        AggregationRun,
        create_aggregation_run,
        {"granularity": "month"},
    ),
    Case("aggregation_runs_status_valid", AggregationRun, create_aggregation_run, {"status": "ok"}),
    Case(
        "aggregation_runs_finished_when_not_running",
        AggregationRun,
        create_aggregation_run,
        {"status": "running"},
    ),
    Case(
        "worker_leases_expires_after_acquired",
        WorkerLease,
        create_worker_lease,
        {"expires_at": datetime(2020, 1, 1, tzinfo=UTC)},
    ),
    Case(
        "trace_extents_first_not_after_last",
        TraceExtent,
        create_trace_extent,
        {"last_started_at": datetime(2026, 11, 29, tzinfo=UTC)},
    ),
]


def _aligned_case_row() -> dict[str, Any]:
    row = create_metrics_aggregate(granularity="hour")
    row["bucket_time"] += timedelta(minutes=30)
    return row


def _updated_before_created(factory: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    row = factory()
    row["updated_at"] = row["created_at"] - timedelta(seconds=1)
    return row


def _range_not_ordered() -> dict[str, Any]:
    row = create_aggregation_run()
    row["range_end"] = row["done_until"] = row["range_start"]
    return row


def _done_after_end() -> dict[str, Any]:
    row = create_aggregation_run()
    row["done_until"] = row["range_end"] + timedelta(hours=1)
    return row


def _ended_before_started(factory: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    # duration_ms 0 keeps the *_duration_ms_non_negative check satisfied.
    row = factory(duration_ms=0)
    row["ended_at"] = row["started_at"] - timedelta(milliseconds=1)
    return row


# Cases whose bad row depends on the factory's own values.
DERIVED_CASES: list[tuple[str, type[Base], Callable[[], dict[str, Any]]]] = [
    ("traces_ended_at_not_before_started_at", T, lambda: _ended_before_started(trace)),
    ("spans_ended_at_not_before_started_at", S, lambda: _ended_before_started(span)),
    ("metrics_aggregates_bucket_time_aligned", M, _aligned_case_row),
    (
        "metrics_aggregates_updated_at_not_before_created_at",
        M,
        lambda: _updated_before_created(create_metrics_aggregate),
    ),
    (
        "aggregation_runs_range_ordered",
        AggregationRun,
        lambda: _range_not_ordered(),
    ),
    (
        "aggregation_runs_done_until_within_range",
        AggregationRun,
        lambda: _done_after_end(),
    ),
    (
        "provider_sync_status_updated_at_not_before_created_at",
        P,
        lambda: _updated_before_created(create_provider_sync_status),
    ),
]


ALL_CASES = [(c.constraint, c.model, c.row) for c in CASES] + DERIVED_CASES


def assert_rejected(
    session: Session, error: IntegrityError, constraint: str, sqlstate: str
) -> None:
    original = error.orig
    assert isinstance(original, psycopg.Error)
    assert original.sqlstate == sqlstate
    assert original.diag.constraint_name == constraint
    assert f'constraint "{constraint}"' in str(error)
    session.rollback()


def assert_session_still_works(session: Session, model: type[Base], row: dict[str, Any]) -> None:
    session.add(model(**row))
    session.commit()
    assert session.scalar(select(func.count()).select_from(model)) == 1


@pytest.mark.parametrize(
    ("constraint", "model", "make_row"), ALL_CASES, ids=[case[0] for case in ALL_CASES]
)
def test_check_constraint_rejects_bad_row(
    obs_session: Session,
    constraint: str,
    model: type[Base],
    make_row: Callable[[], dict[str, Any]],
) -> None:
    obs_session.add(model(**make_row()))
    with pytest.raises(IntegrityError) as caught:
        obs_session.commit()
    assert_rejected(obs_session, caught.value, constraint, CHECK_VIOLATION)
    factory = next(c.factory for c in CASES if c.model is model)
    assert_session_still_works(obs_session, model, factory())


# model_prices holds seeded rows that the test fixtures keep, so its cases only check rejection.
PRICE_CASES = [
    ("model_prices_model_not_empty", {"model": ""}),
    ("model_prices_provider_not_empty", {"provider": ""}),
    ("model_prices_input_price_non_negative", {"input_usd_per_million": Decimal("-0.01")}),
    ("model_prices_output_price_non_negative", {"output_usd_per_million": Decimal("-1")}),
]


@pytest.mark.parametrize(("constraint", "overrides"), PRICE_CASES, ids=[c for c, _ in PRICE_CASES])
def test_model_price_check_constraint_rejects_bad_row(
    obs_session: Session, constraint: str, overrides: dict[str, Any]
) -> None:
    row = {
        "model": "constraint-test-model",
        "provider": "constraint-test",
        "effective_from": datetime(2030, 1, 1, tzinfo=UTC),
        "input_usd_per_million": Decimal("1.5"),
        "output_usd_per_million": Decimal("6"),
        **overrides,
    }
    obs_session.add(ModelPrice(**row))
    with pytest.raises(IntegrityError) as caught:
        obs_session.commit()
    assert_rejected(obs_session, caught.value, constraint, CHECK_VIOLATION)


# The granularity catalogue is seeded by its migration; a bad row is tried and rolled back.
GRANULARITY_CASES = ["granularities_offsets_check"]


def test_granularity_refresh_window_must_end_before_it_starts(migrated_database_url: str) -> None:
    with psycopg.connect(migrated_database_url) as conn:
        with pytest.raises(psycopg.errors.CheckViolation) as caught:
            conn.execute(
                "insert into observability.granularities (name, position, level, bucket_width,"
                " refresh_start_offset, refresh_end_offset, refresh_schedule) values"
                " ('quarter', 9, 'quarterly', '3 months', '1 day', '2 days', '1 day')"
            )
        conn.rollback()
    assert caught.value.diag.constraint_name == GRANULARITY_CASES[0]


def test_every_check_constraint_has_a_bad_input_case() -> None:
    declared = declared_names().check_constraints - {"schema_migrations_sha256_format"}
    cases = {case[0] for case in ALL_CASES} | {case[0] for case in PRICE_CASES}
    assert cases | set(GRANULARITY_CASES) == declared


@pytest.mark.parametrize(
    ("model", "factory", "column"),
    [
        (Trace, create_completed_trace, "name"),
        (Span, create_llm_span, "span_type"),
        (ChatMessage, create_chat_message, "content"),
        (DocumentEvent, create_document_event, "document_id"),
        (MetricsAggregate, create_metrics_aggregate, "count"),
        (ProviderSyncStatus, create_provider_sync_status, "provider_name"),
    ],
)
def test_not_null_columns_reject_null(
    obs_session: Session,
    model: type[Base],
    factory: Callable[..., dict[str, Any]],
    column: str,
) -> None:
    obs_session.add(model(**factory(**{column: None})))
    with pytest.raises(IntegrityError) as caught:
        obs_session.commit()
    original = caught.value.orig
    assert isinstance(original, psycopg.Error)
    assert (original.sqlstate, original.diag.column_name) == (NOT_NULL_VIOLATION, column)
    obs_session.rollback()
    assert_session_still_works(obs_session, model, factory())


@pytest.mark.parametrize(
    ("model", "factory", "key"),
    [
        (Trace, create_completed_trace, "traces_pkey"),
        (Span, create_llm_span, "spans_pkey"),
        (MetricsAggregate, create_metrics_aggregate, "metrics_aggregates_pkey"),
    ],
)
def test_duplicate_key_is_rejected(
    obs_session: Session,
    model: type[Base],
    factory: Callable[..., dict[str, Any]],
    key: str,
) -> None:
    row = factory()
    insert(obs_session, model, row)
    obs_session.expunge_all()
    obs_session.add(model(**row))
    with pytest.raises(IntegrityError) as caught:
        obs_session.commit()
    original = caught.value.orig
    assert isinstance(original, psycopg.Error)
    assert original.sqlstate == UNIQUE_VIOLATION
    # On a hypertable the violated index is the chunk's copy, named like "1_1_traces_pkey".
    assert (original.diag.constraint_name or "").endswith(key)
    obs_session.rollback()
    assert obs_session.scalar(select(func.count()).select_from(model)) == 1


def test_schema_migrations_rejects_a_malformed_sha256(
    migrated_database_url: str, conn: psycopg.Connection
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute(
            "insert into observability.schema_migrations (name, sha256) values (%s, %s)",
            ["999-bogus.sql", "not-a-hash"],
        )
    assert caught.value.diag.constraint_name == "schema_migrations_sha256_format"
