from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlalchemy.orm import Session

from tests.factories import (
    bucket_start,
    create_chat_message,
    create_document_event,
    create_metrics_aggregate,
    create_provider_sync_status,
    create_span,
    create_span_event,
    create_trace,
)
from tests.observability_helpers import assert_row_equals, insert, reload
from worker.models import (
    DIMENSION_TYPES,
    GRANULARITIES,
    MESSAGE_ROLES,
    SPAN_TYPES,
    SYNC_STATUSES,
    TRACE_STATUSES,
    Base,
    ChatMessage,
    DocumentEvent,
    MetricsAggregate,
    ProviderSyncStatus,
    Span,
    SpanEvent,
    Trace,
)

# Valid rows means: whatever the SQL constraints allow. Two limits come from PostgreSQL itself
# rather than from the schema: text cannot hold NUL, and jsonb stores numbers as numeric, so a
# float like 1e300 comes back as the integer 10**300; JSON floats stay below 1e15 here.
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=30)
NON_EMPTY = TEXT.filter(bool)
IDENTIFIER = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
TRACE_IDS = st.integers(1, 2**128 - 1).map(lambda n: f"{n:032x}")
SPAN_IDS = st.integers(1, 2**64 - 1).map(lambda n: f"{n:016x}")
MOMENTS = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)
INT4 = st.integers(0, 2**31 - 1)
INT8 = st.integers(0, 2**63 - 1)
USD = st.decimals(min_value=0, max_value=Decimal("9999.999999"), places=6)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | INT8
    | st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
JSON_OBJECT = st.dictionaries(TEXT, JSON, max_size=4)
METRIC_TYPES = st.from_regex(r"[a-z][a-z0-9_]{0,10}(\.[a-z][a-z0-9_]{0,10}){1,2}", fullmatch=True)
ROUNDTRIP = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def timing(draw: st.DrawFn) -> dict[str, Any]:
    started_at = draw(MOMENTS)
    if draw(st.booleans()):
        return {"started_at": started_at, "ended_at": None, "duration_ms": draw(optional(INT4))}
    elapsed = timedelta(microseconds=draw(st.integers(0, 10**11)))
    return {
        "started_at": started_at,
        "ended_at": started_at + elapsed,
        "duration_ms": draw(INT4),
    }


@st.composite
def trace_rows(draw: st.DrawFn) -> dict[str, Any]:
    return dict(
        **draw(timing()),
        trace_id=draw(TRACE_IDS),
        name=draw(NON_EMPTY),
        operation_type=draw(IDENTIFIER),
        status=draw(st.sampled_from(TRACE_STATUSES)),
        user_id=draw(optional(st.uuids())),
        session_id=draw(optional(NON_EMPTY)),
        kb_id=draw(optional(st.uuids())),
        total_tokens=draw(optional(INT4)),
        cost_usd=draw(optional(USD)),
        error_type=draw(optional(TEXT)),
        error_message=draw(optional(TEXT)),
        attributes=draw(JSON_OBJECT),
    )


@st.composite
def span_rows(draw: st.DrawFn) -> dict[str, Any]:
    span_id = draw(SPAN_IDS)
    parent = draw(optional(SPAN_IDS.filter(lambda s: s != span_id)))
    return dict(
        **draw(timing()),
        trace_id=draw(TRACE_IDS),
        span_id=span_id,
        parent_span_id=parent,
        name=draw(NON_EMPTY),
        span_type=draw(st.sampled_from(SPAN_TYPES)),
        operation_name=draw(optional(TEXT)),
        status=draw(st.sampled_from(TRACE_STATUSES)),
        provider=draw(optional(NON_EMPTY)),
        model=draw(optional(NON_EMPTY)),
        input_tokens=draw(optional(INT4)),
        output_tokens=draw(optional(INT4)),
        time_to_first_token_ms=draw(optional(INT4)),
        cost_usd=draw(optional(USD)),
        kb_id=draw(optional(st.uuids())),
        documents_retrieved=draw(optional(INT4)),
        error_type=draw(optional(TEXT)),
        error_message=draw(optional(TEXT)),
        attributes=draw(JSON_OBJECT),
        links=draw(st.lists(LINKS, max_size=3)),
    )


LINKS = st.fixed_dictionaries(
    {"trace_id": TRACE_IDS, "span_id": SPAN_IDS, "attributes": JSON_OBJECT}
)


@st.composite
def span_event_rows(draw: st.DrawFn) -> dict[str, Any]:
    return dict(
        trace_id=draw(TRACE_IDS),
        span_id=draw(SPAN_IDS),
        span_started_at=draw(MOMENTS),
        event_index=draw(INT4),
        occurred_at=draw(optional(MOMENTS)),
        name=draw(NON_EMPTY),
        attributes=draw(JSON_OBJECT),
    )


@st.composite
def chat_message_rows(draw: st.DrawFn) -> dict[str, Any]:
    return dict(
        id=draw(st.uuids()),
        created_at=draw(MOMENTS),
        session_id=draw(NON_EMPTY),
        trace_id=draw(optional(TRACE_IDS)),
        user_id=draw(optional(st.uuids())),
        kb_id=draw(optional(st.uuids())),
        role=draw(st.sampled_from(MESSAGE_ROLES)),
        content=draw(TEXT),
        model=draw(optional(NON_EMPTY)),
        token_count=draw(optional(INT4)),
        latency_ms=draw(optional(INT4)),
        sources=draw(st.lists(JSON_OBJECT, max_size=3)),
        citations=draw(st.lists(JSON_OBJECT, max_size=3)),
        attributes=draw(JSON_OBJECT),
    )


@st.composite
def document_event_rows(draw: st.DrawFn) -> dict[str, Any]:
    return dict(
        id=draw(st.uuids()),
        created_at=draw(MOMENTS),
        document_id=draw(st.uuids()),
        kb_id=draw(optional(st.uuids())),
        trace_id=draw(optional(TRACE_IDS)),
        event_type=draw(IDENTIFIER),
        status=draw(st.sampled_from(TRACE_STATUSES)),
        duration_ms=draw(optional(INT4)),
        chunks_count=draw(optional(INT4)),
        token_count=draw(optional(INT4)),
        file_size_bytes=draw(optional(INT8)),
        error_message=draw(optional(TEXT)),
        attributes=draw(JSON_OBJECT),
    )


@st.composite
def metrics_aggregate_rows(draw: st.DrawFn) -> dict[str, Any]:
    granularity = draw(st.sampled_from(GRANULARITIES))
    dimension_type = draw(st.sampled_from(DIMENSION_TYPES))
    low, p50, p95, p99, high = sorted(draw(st.lists(FLOATS, min_size=5, max_size=5)))
    created_at = draw(MOMENTS)
    return dict(
        bucket_time=bucket_start(draw(MOMENTS), granularity),
        granularity=granularity,
        metric_type=draw(
            st.from_regex(r"[a-z][a-z0-9_]{0,10}(\.[a-z][a-z0-9_]{0,10}){1,2}", fullmatch=True)
        ),
        dimension_type=dimension_type,
        dimension_value="" if dimension_type == "overall" else draw(NON_EMPTY),
        count=draw(INT8),
        sum_value=draw(optional(FLOATS)),
        min_value=low,
        max_value=high,
        avg_value=draw(optional(FLOATS)),
        p50_value=p50,
        p95_value=p95,
        p99_value=p99,
        created_at=created_at,
        updated_at=created_at + timedelta(microseconds=draw(st.integers(0, 10**12))),
    )


@st.composite
def provider_sync_status_rows(draw: st.DrawFn) -> dict[str, Any]:
    created_at = draw(MOMENTS)
    return dict(
        id=draw(st.uuids()),
        provider_name=draw(NON_EMPTY),
        status=draw(st.sampled_from(SYNC_STATUSES)),
        synced_through=draw(optional(MOMENTS)),
        last_attempt_at=draw(optional(MOMENTS)),
        last_success_at=draw(optional(MOMENTS)),
        records_synced=draw(INT8),
        consecutive_failures=draw(INT4),
        last_error=draw(optional(TEXT)),
        created_at=created_at,
        updated_at=created_at + timedelta(microseconds=draw(st.integers(0, 10**12))),
    )


# Strategies draw the overrides; the factory runs in the test body, because hypothesis wants
# no use of the random module (which the factories use for their defaults) inside strategies.
Overrides = Callable[[], st.SearchStrategy[dict[str, Any]]]
ROW_STRATEGIES: list[tuple[type[Base], Callable[..., dict[str, Any]], Overrides]] = [
    (Trace, create_trace, trace_rows),
    (Span, create_span, span_rows),
    (SpanEvent, create_span_event, span_event_rows),
    (ChatMessage, create_chat_message, chat_message_rows),
    (DocumentEvent, create_document_event, document_event_rows),
    (MetricsAggregate, create_metrics_aggregate, metrics_aggregate_rows),
    (ProviderSyncStatus, create_provider_sync_status, provider_sync_status_rows),
]


@pytest.mark.parametrize(
    ("model", "factory", "overrides"),
    ROW_STRATEGIES,
    ids=[model.__name__ for model, _, _ in ROW_STRATEGIES],
)
def test_valid_rows_insert_and_read_back_equal(
    obs_session: Session,
    model: type[Base],
    factory: Callable[..., dict[str, Any]],
    overrides: Overrides,
) -> None:
    examples = 0

    @ROUNDTRIP
    @given(columns=overrides())
    def roundtrip(columns: dict[str, Any]) -> None:
        nonlocal examples
        # Each example starts from an empty table: hypothesis replays and shrinks examples,
        # which would otherwise collide on the keys of rows left by earlier ones.
        obs_session.rollback()
        obs_session.execute(delete(model))
        obs_session.commit()
        row = factory(**columns)
        assert set(columns) == set(row), "the strategy must set every column"
        stored = reload(obs_session, insert(obs_session, model, row))
        assert_row_equals(stored, row)
        examples += 1

    roundtrip()
    assert examples >= ROUNDTRIP.max_examples
