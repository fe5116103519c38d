from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import inspect

import tests.factories as factories
from tests.observability_helpers import SPAN_ID, TRACE_ID
from worker.models import (
    Base,
    ChatMessage,
    DocumentEvent,
    MetricsAggregate,
    ProviderSyncStatus,
    Span,
    Trace,
)

FACTORIES: list[tuple[Callable[..., dict[str, Any]], type[Base]]] = [
    (factories.create_trace, Trace),
    (factories.create_completed_trace, Trace),
    (factories.create_failed_trace, Trace),
    (factories.create_span, Span),
    (factories.create_llm_span, Span),
    (factories.create_retrieval_span, Span),
    (factories.create_chat_message, ChatMessage),
    (factories.create_obs_chat_message, ChatMessage),
    (factories.create_document_event, DocumentEvent),
    (factories.create_metrics_aggregate, MetricsAggregate),
    (factories.create_provider_sync_status, ProviderSyncStatus),
]
IDS = [factory.__name__ for factory, _ in FACTORIES]


@pytest.mark.parametrize(("factory", "model"), FACTORIES, ids=IDS)
def test_rows_have_exactly_the_model_columns(
    factory: Callable[..., dict[str, Any]], model: type[Base]
) -> None:
    row = factory()
    assert set(row) == {attr.key for attr in inspect(model).column_attrs}
    model(**row)


@pytest.mark.parametrize(("factory", "model"), FACTORIES, ids=IDS)
def test_datetimes_are_utc_aware(factory: Callable[..., dict[str, Any]], model: type[Base]) -> None:
    for value in factory().values():
        if isinstance(value, datetime):
            assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(("factory", "model"), FACTORIES, ids=IDS)
def test_unknown_override_is_an_error(
    factory: Callable[..., dict[str, Any]], model: type[Base]
) -> None:
    with pytest.raises(TypeError, match="no_such_column"):
        factory(no_such_column=1)


def test_ids_are_w3c_valid() -> None:
    span = factories.create_llm_span()
    assert TRACE_ID.match(span["trace_id"]) and SPAN_ID.match(span["span_id"])


@pytest.mark.parametrize(
    "factory",
    [factories.create_completed_trace, factories.create_failed_trace, factories.create_llm_span],
)
def test_timing_is_consistent(factory: Callable[..., dict[str, Any]]) -> None:
    row = factory()
    assert row["ended_at"] - row["started_at"] == timedelta(milliseconds=row["duration_ms"])
    started = datetime(2025, 3, 1, 12, tzinfo=UTC)
    row = factory(started_at=started, duration_ms=250)
    assert row["ended_at"] == started + timedelta(milliseconds=250)
    row = factory(started_at=started, ended_at=started + timedelta(seconds=2))
    assert row["duration_ms"] == 2000


def test_trace_statuses() -> None:
    assert factories.create_trace()["status"] == "running"
    assert factories.create_completed_trace()["status"] == "ok"
    failed = factories.create_failed_trace()
    assert failed["status"] == "error" and failed["error_type"] and failed["error_message"]


def test_span_types() -> None:
    llm = factories.create_llm_span(model="claude-3")
    assert (llm["span_type"], llm["model"], llm["provider"]) == ("llm", "claude-3", "anthropic")
    assert 0 <= llm["time_to_first_token_ms"] <= llm["duration_ms"]
    retrieval = factories.create_retrieval_span()
    assert retrieval["span_type"] == "retrieval" and retrieval["kb_id"] is not None


@pytest.mark.parametrize("granularity", ["hour", "day", "week"])
def test_metrics_aggregate_is_consistent(granularity: str) -> None:
    row = factories.create_metrics_aggregate(granularity=granularity)
    bucket = row["bucket_time"]
    assert bucket == factories.bucket_start(bucket, granularity)
    assert row["min_value"] <= row["p50_value"] <= row["p95_value"] <= row["p99_value"]
    assert row["p99_value"] <= row["max_value"]
    assert row["avg_value"] == pytest.approx(row["sum_value"] / row["count"])
    assert (row["dimension_type"], row["dimension_value"]) == ("overall", "")
    assert factories.create_metrics_aggregate(dimension_type="model")["dimension_value"]


def test_week_buckets_start_on_monday() -> None:
    sunday = datetime(2025, 12, 14, 23, 59, tzinfo=UTC)
    assert factories.bucket_start(sunday, "week") == datetime(2025, 12, 8, tzinfo=UTC)


def test_traces_for_aggregation() -> None:
    user_id, kb_id = uuid4(), uuid4()
    before = datetime.now(UTC)
    traces = factories.create_traces_for_aggregation(
        count=50, operation_type="chat", time_range_hours=2, user_id=user_id, kb_id=kb_id
    )
    assert len(traces) == 50
    assert len({t["trace_id"] for t in traces}) == 50
    assert {(t["operation_type"], t["user_id"], t["kb_id"]) for t in traces} == {
        ("chat", user_id, kb_id)
    }
    starts = [t["started_at"] for t in traces]
    assert starts == sorted(starts)
    assert before - timedelta(hours=2, seconds=1) <= starts[0] <= starts[-1] <= datetime.now(UTC)
    assert all(t["status"] == "ok" and 100 <= t["duration_ms"] <= 5000 for t in traces)


def test_traces_for_aggregation_vary_when_not_fixed() -> None:
    traces = factories.create_traces_for_aggregation(count=60)
    assert len({t["user_id"] for t in traces}) == 60
    assert {t["operation_type"] for t in traces} <= {"chat", "search", "generation"}


def test_llm_spans_for_aggregation() -> None:
    trace_id = factories.generate_trace_id()
    spans = factories.create_llm_spans_for_aggregation(count=20, model="gpt-4", trace_id=trace_id)
    assert len(spans) == 20
    assert {(s["span_type"], s["model"], s["trace_id"]) for s in spans} == {
        ("llm", "gpt-4", trace_id)
    }
    assert len({s["span_id"] for s in spans}) == 20
    assert all(100 <= s["duration_ms"] <= 3000 for s in spans)
    assert len({s["trace_id"] for s in factories.create_llm_spans_for_aggregation()}) == 10
