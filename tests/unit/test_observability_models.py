from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import uuid4

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tests.factories import (
    bucket_start,
    create_chat_message,
    create_completed_trace,
    create_document_event,
    create_failed_trace,
    create_llm_span,
    create_metrics_aggregate,
    create_provider_sync_status,
    create_retrieval_span,
    create_span,
    create_trace,
    generate_span_id,
    generate_trace_id,
)
from tests.observability_helpers import (
    SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    assert_row_equals,
    insert,
    reload,
)
from worker.models import (
    ChatMessage,
    DocumentEvent,
    MetricsAggregate,
    ProviderSyncStatus,
    Span,
    Trace,
)


class TestTraceIdGeneration:
    def test_is_32_lowercase_hex(self) -> None:
        for _ in range(200):
            assert TRACE_ID.match(generate_trace_id())

    def test_is_never_all_zeros(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The smallest value the generator can draw is 1, never 0.
        monkeypatch.setattr("random.randrange", lambda start, stop: start)
        assert generate_trace_id() == "0" * 31 + "1"

    def test_ids_are_unique(self) -> None:
        assert len({generate_trace_id() for _ in range(5000)}) == 5000

    def test_forms_a_valid_traceparent(self) -> None:
        assert TRACEPARENT.match(f"00-{generate_trace_id()}-{generate_span_id()}-01")

    def test_database_accepts_generated_ids(self, obs_session: Session) -> None:
        trace_ids = [generate_trace_id() for _ in range(20)]
        for trace_id in trace_ids:
            obs_session.add(Trace(**create_trace(trace_id=trace_id)))
        obs_session.commit()
        stored = obs_session.scalars(select(Trace.trace_id)).all()
        assert sorted(stored) == sorted(trace_ids)


class TestSpanIdGeneration:
    def test_is_16_lowercase_hex(self) -> None:
        for _ in range(200):
            assert SPAN_ID.match(generate_span_id())

    def test_is_never_all_zeros(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("random.randrange", lambda start, stop: start)
        assert generate_span_id() == "0" * 15 + "1"

    def test_ids_are_unique(self) -> None:
        assert len({generate_span_id() for _ in range(5000)}) == 5000

    def test_database_accepts_generated_ids(self, obs_session: Session) -> None:
        trace_id = generate_trace_id()
        span_ids = [generate_span_id() for _ in range(20)]
        for span_id in span_ids:
            obs_session.add(Span(**create_span(trace_id=trace_id, span_id=span_id)))
        obs_session.commit()
        stored = obs_session.scalars(select(Span.span_id).where(Span.trace_id == trace_id)).all()
        assert sorted(stored) == sorted(span_ids)


class TestTraceModel:
    def test_create_and_read(self, obs_session: Session) -> None:
        row = create_completed_trace()
        trace = insert(obs_session, Trace, row)
        assert_row_equals(reload(obs_session, trace), row)

    def test_lookup_by_trace_id(self, obs_session: Session) -> None:
        rows = [create_completed_trace() for _ in range(3)]
        for row in rows:
            obs_session.add(Trace(**row))
        obs_session.commit()
        found = obs_session.scalars(
            select(Trace).where(Trace.trace_id == rows[1]["trace_id"])
        ).one()
        assert found.started_at == rows[1]["started_at"]

    def test_defaults_for_a_started_trace(self, obs_session: Session) -> None:
        row = create_trace()
        for column in ("status", "attributes"):
            del row[column]
        trace = reload(obs_session, insert(obs_session, Trace, row))
        assert trace.status == "running"
        assert trace.attributes == {}
        assert trace.ended_at is None

    def test_update_completes_the_trace(self, obs_session: Session) -> None:
        trace = insert(obs_session, Trace, create_trace())
        trace.status = "ok"
        trace.ended_at = trace.started_at + timedelta(milliseconds=1234)
        trace.duration_ms = 1234
        trace.total_tokens = 812
        trace.cost_usd = Decimal("0.012345")
        obs_session.commit()
        stored = reload(obs_session, trace)
        assert (stored.status, stored.duration_ms, stored.total_tokens) == ("ok", 1234, 812)
        assert stored.cost_usd == Decimal("0.012345")

    def test_failed_trace_keeps_error_details(self, obs_session: Session) -> None:
        row = create_failed_trace(error_type="RateLimitError", error_message="429 from provider")
        stored = reload(obs_session, insert(obs_session, Trace, row))
        assert stored.status == "error"
        assert (stored.error_type, stored.error_message) == ("RateLimitError", "429 from provider")

    def test_cost_usd_has_six_decimal_places(self, obs_session: Session) -> None:
        row = create_completed_trace(cost_usd=Decimal("1234.567891"))
        stored = reload(obs_session, insert(obs_session, Trace, row))
        assert stored.cost_usd == Decimal("1234.567891")
        assert stored.cost_usd.as_tuple().exponent == -6

    def test_delete(self, obs_session: Session) -> None:
        trace = insert(obs_session, Trace, create_completed_trace())
        obs_session.delete(trace)
        obs_session.commit()
        assert obs_session.scalar(select(func.count()).select_from(Trace)) == 0

    async def test_crud_with_async_session(self, obs_async_session: AsyncSession) -> None:
        row = create_completed_trace()
        obs_async_session.add(Trace(**row))
        await obs_async_session.commit()
        key = (row["trace_id"], row["started_at"])
        obs_async_session.expunge_all()
        trace = await obs_async_session.get(Trace, key)
        assert trace is not None
        assert_row_equals(trace, row)
        trace.status = "error"
        await obs_async_session.commit()
        await obs_async_session.refresh(trace)
        assert trace.status == "error"
        await obs_async_session.delete(trace)
        await obs_async_session.commit()
        assert await obs_async_session.get(Trace, key) is None


class TestSpanModel:
    def test_create_and_read_an_llm_span(self, obs_session: Session) -> None:
        row = create_llm_span(model="gpt-4")
        stored = reload(obs_session, insert(obs_session, Span, row))
        assert_row_equals(stored, row)
        assert (stored.span_type, stored.provider, stored.model) == ("llm", "openai", "gpt-4")
        assert stored.input_tokens is not None and stored.output_tokens is not None
        assert stored.time_to_first_token_ms is not None
        assert stored.kb_id is None

    def test_create_and_read_a_retrieval_span(self, obs_session: Session) -> None:
        row = create_retrieval_span(documents_retrieved=7)
        stored = reload(obs_session, insert(obs_session, Span, row))
        assert_row_equals(stored, row)
        assert stored.span_type == "retrieval"
        assert stored.model is None and stored.input_tokens is None

    def test_spans_of_a_trace_in_order(self, obs_session: Session) -> None:
        root = create_span(name="chat turn")
        trace_id, start = root["trace_id"], root["started_at"]
        children = [
            create_retrieval_span(
                trace_id=trace_id,
                parent_span_id=root["span_id"],
                started_at=start + timedelta(milliseconds=5),
            ),
            create_llm_span(
                trace_id=trace_id,
                parent_span_id=root["span_id"],
                started_at=start + timedelta(milliseconds=90),
            ),
        ]
        for row in [children[1], root, children[0], create_span()]:
            obs_session.add(Span(**row))
        obs_session.commit()
        spans = obs_session.scalars(
            select(Span).where(Span.trace_id == trace_id).order_by(Span.started_at)
        ).all()
        assert [s.span_type for s in spans] == ["chain", "retrieval", "llm"]
        assert {s.parent_span_id for s in spans[1:]} == {root["span_id"]}

    def test_update_token_usage(self, obs_session: Session) -> None:
        span = insert(obs_session, Span, create_llm_span())
        span.input_tokens, span.output_tokens = 1000, 250
        obs_session.commit()
        stored = reload(obs_session, span)
        assert (stored.input_tokens, stored.output_tokens) == (1000, 250)

    def test_delete(self, obs_session: Session) -> None:
        span = insert(obs_session, Span, create_llm_span())
        obs_session.delete(span)
        obs_session.commit()
        assert obs_session.scalar(select(func.count()).select_from(Span)) == 0


class TestChatMessageModel:
    def test_create_and_read_with_sources_and_citations(self, obs_session: Session) -> None:
        row = create_chat_message()
        stored = reload(obs_session, insert(obs_session, ChatMessage, row))
        assert_row_equals(stored, row)
        assert stored.sources[0]["score"] == 0.87
        assert stored.citations[0]["document_id"] == stored.sources[0]["document_id"]

    def test_server_fills_id_and_created_at(self, obs_session: Session) -> None:
        row = create_chat_message(role="user", model=None, sources=[], citations=[])
        for column in ("id", "created_at"):
            del row[column]
        message = insert(obs_session, ChatMessage, row)
        assert message.id is not None and message.created_at is not None

    def test_conversation_in_order(self, obs_session: Session) -> None:
        first = create_chat_message(role="user", model=None, sources=[], citations=[])
        session_id = first["session_id"]
        answer = create_chat_message(
            session_id=session_id, created_at=first["created_at"] + timedelta(seconds=2)
        )
        for row in [answer, create_chat_message(), first]:
            obs_session.add(ChatMessage(**row))
        obs_session.commit()
        roles = obs_session.scalars(
            select(ChatMessage.role)
            .where(ChatMessage.session_id == session_id)
            .order_by(ChatMessage.created_at)
        ).all()
        assert roles == ["user", "assistant"]

    def test_update_content(self, obs_session: Session) -> None:
        message = insert(obs_session, ChatMessage, create_chat_message())
        message.content = "Edited answer."
        message.citations = []
        obs_session.commit()
        stored = reload(obs_session, message)
        assert (stored.content, stored.citations) == ("Edited answer.", [])

    def test_delete(self, obs_session: Session) -> None:
        message = insert(obs_session, ChatMessage, create_chat_message())
        obs_session.delete(message)
        obs_session.commit()
        assert obs_session.scalar(select(func.count()).select_from(ChatMessage)) == 0


class TestDocumentEventModel:
    def test_create_and_read(self, obs_session: Session) -> None:
        row = create_document_event(event_type="chunk", chunks_count=42)
        stored = reload(obs_session, insert(obs_session, DocumentEvent, row))
        assert_row_equals(stored, row)

    def test_processing_history_of_a_document(self, obs_session: Session) -> None:
        document_id = uuid4()
        start = create_document_event()["created_at"]
        steps = ["upload", "parse", "chunk", "embed", "index"]
        for offset, step in reversed(list(enumerate(steps))):
            obs_session.add(
                DocumentEvent(
                    **create_document_event(
                        document_id=document_id,
                        event_type=step,
                        created_at=start + timedelta(seconds=offset),
                    )
                )
            )
        obs_session.add(DocumentEvent(**create_document_event()))
        obs_session.commit()
        history = obs_session.scalars(
            select(DocumentEvent.event_type)
            .where(DocumentEvent.document_id == document_id)
            .order_by(DocumentEvent.created_at)
        ).all()
        assert history == steps

    def test_update_status_to_error(self, obs_session: Session) -> None:
        event = insert(obs_session, DocumentEvent, create_document_event(status="running"))
        event.status, event.error_message = "error", "parser crashed on page 12"
        obs_session.commit()
        assert reload(obs_session, event).status == "error"

    def test_delete(self, obs_session: Session) -> None:
        event = insert(obs_session, DocumentEvent, create_document_event())
        obs_session.delete(event)
        obs_session.commit()
        assert obs_session.scalar(select(func.count()).select_from(DocumentEvent)) == 0


class TestMetricsAggregateModel:
    def test_create_and_read_with_percentiles(self, obs_session: Session) -> None:
        row = create_metrics_aggregate(dimension_type="model", dimension_value="gpt-4")
        stored = reload(obs_session, insert(obs_session, MetricsAggregate, row))
        assert_row_equals(stored, row)
        assert stored.min_value <= stored.p50_value <= stored.p95_value <= stored.p99_value
        assert stored.p99_value <= stored.max_value

    def test_overall_row_defaults(self, obs_session: Session) -> None:
        row = create_metrics_aggregate()
        for column in ("dimension_type", "dimension_value", "created_at", "updated_at"):
            del row[column]
        stored = reload(obs_session, insert(obs_session, MetricsAggregate, row))
        assert (stored.dimension_type, stored.dimension_value) == ("overall", "")

    @pytest.mark.parametrize("granularity", ["hour", "day", "week"])
    def test_bucket_alignment_per_granularity(self, obs_session: Session, granularity: str) -> None:
        row = create_metrics_aggregate(granularity=granularity)
        stored = reload(obs_session, insert(obs_session, MetricsAggregate, row))
        assert stored.bucket_time == bucket_start(stored.bucket_time, granularity)

    def test_upsert_on_the_primary_key_updates_in_place(self, obs_session: Session) -> None:
        row = create_metrics_aggregate(dimension_type="operation_type", dimension_value="chat")
        key_columns = [c.name for c in MetricsAggregate.__table__.primary_key.columns]
        for count in (10, 25):
            values = {**row, "count": count, "sum_value": float(count)}
            statement = pg_insert(MetricsAggregate).values(values)
            statement = statement.on_conflict_do_update(
                index_elements=key_columns,
                set_={
                    "count": statement.excluded.count,
                    "sum_value": statement.excluded.sum_value,
                    "updated_at": func.now(),
                },
            )
            obs_session.execute(statement)
            obs_session.commit()
        stored = obs_session.scalars(select(MetricsAggregate)).all()
        assert [(s.count, s.sum_value) for s in stored] == [(25, 25.0)]

    def test_update_and_delete(self, obs_session: Session) -> None:
        row = create_metrics_aggregate()
        aggregate = insert(obs_session, MetricsAggregate, row)
        aggregate.p99_value = row["max_value"]
        obs_session.commit()
        aggregate = reload(obs_session, aggregate)
        assert aggregate.p99_value == row["max_value"]
        obs_session.delete(aggregate)
        obs_session.commit()
        assert obs_session.scalar(select(func.count()).select_from(MetricsAggregate)) == 0


class TestProviderSyncStatusModel:
    def test_create_and_read(self, obs_session: Session) -> None:
        row = create_provider_sync_status(provider_name="langfuse")
        stored = reload(obs_session, insert(obs_session, ProviderSyncStatus, row))
        assert_row_equals(stored, row)

    def test_server_defaults(self, obs_session: Session) -> None:
        status = insert(obs_session, ProviderSyncStatus, {"provider_name": "otlp"})
        stored = reload(obs_session, status)
        assert (stored.status, stored.records_synced, stored.consecutive_failures) == (
            "pending",
            0,
            0,
        )
        assert stored.created_at == stored.updated_at

    def test_one_row_per_provider(self, obs_session: Session) -> None:
        insert(obs_session, ProviderSyncStatus, create_provider_sync_status(provider_name="x"))
        obs_session.add(ProviderSyncStatus(**create_provider_sync_status(provider_name="x")))
        with pytest.raises(IntegrityError) as caught:
            obs_session.commit()
        assert caught.value.orig is not None
        assert caught.value.orig.diag.constraint_name == "provider_sync_status_provider_name_key"

    def test_record_a_failed_run(self, obs_session: Session) -> None:
        row = create_provider_sync_status()
        row["updated_at"] = row["created_at"] + timedelta(hours=1)
        status = insert(obs_session, ProviderSyncStatus, row)
        status.status = "failed"
        status.consecutive_failures += 1
        status.last_error = "HTTP 503 from collector"
        obs_session.commit()
        stored = reload(obs_session, status)
        assert (stored.status, stored.consecutive_failures) == ("failed", 1)
        # updated_at is bumped by the model (onupdate=now()).
        assert stored.updated_at > row["updated_at"]

    def test_delete(self, obs_session: Session) -> None:
        status = insert(obs_session, ProviderSyncStatus, create_provider_sync_status())
        obs_session.delete(status)
        obs_session.commit()
        assert obs_session.scalar(select(func.count()).select_from(ProviderSyncStatus)) == 0
