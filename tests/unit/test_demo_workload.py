from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from worker.demo.workload import (
    DOCUMENT_STEPS,
    KNOWLEDGE_BASES,
    MARKER,
    MODELS,
    OPERATIONS,
    RATE_MARKER,
    Batch,
    Generator,
    demo_window,
    hourly_load,
    kb_id,
    token_cost,
)
from worker.ingest import DEFAULT_LIMITS
from worker.ingest.items import CHAT_MESSAGE, DOCUMENT_EVENT, SPAN, TRACE
from worker.models.observability import TRACE_STATUSES

PRICES = {
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "claude-3-5-sonnet": (Decimal("3.00"), Decimal("15.00")),
    "gemini-1.5-flash": (Decimal("0.075"), Decimal("0.30")),
    "text-embedding-3-small": (Decimal("0.02"), Decimal("0.00")),
}
NOW = datetime(2026, 11, 22, 5, 37, 12, tzinfo=UTC)


def week(seed: int = 7, traces_per_hour: float = 20) -> Batch:
    start, end = demo_window(NOW)
    merged = Batch()
    for _, batch in Generator(seed, PRICES, traces_per_hour).hours(start, end):
        merged.traces += batch.traces
        merged.spans += batch.spans
        merged.chat_messages += batch.chat_messages
        merged.document_events += batch.document_events
    return merged


@pytest.fixture(scope="module")
def workload() -> Batch:
    return week()


def test_the_window_is_seven_days_ending_at_the_last_full_hour() -> None:
    start, end = demo_window(NOW)
    assert end == datetime(2026, 11, 22, 5, tzinfo=UTC)
    assert end - start == timedelta(days=7)


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_rows(workload: Batch) -> None:
    again = week()
    assert again.traces == workload.traces
    assert again.spans == workload.spans
    assert again.chat_messages == workload.chat_messages
    assert again.document_events == workload.document_events
    other = week(seed=8)
    assert {t["trace_id"] for t in other.traces}.isdisjoint(t["trace_id"] for t in workload.traces)


def test_every_kind_of_row_is_present(workload: Batch) -> None:
    assert {t["operation_type"] for t in workload.traces} == set(OPERATIONS)
    assert {t["kb_id"] for t in workload.traces} == {kb_id(n) for n in KNOWLEDGE_BASES}
    assert len({t["user_id"] for t in workload.traces}) >= 40
    assert {s["span_type"] for s in workload.spans} == {
        "chain",
        "embedding",
        "retrieval",
        "rerank",
        "llm",
    }
    llm = [s for s in workload.spans if s["span_type"] == "llm"]
    assert {s["model"] for s in llm} == {m.name for m in MODELS}
    assert len({s["provider"] for s in llm}) == 3
    assert all(s["time_to_first_token_ms"] <= s["duration_ms"] for s in llm)
    retrievals = [s for s in workload.spans if s["span_type"] == "retrieval"]
    assert all(s["kb_id"] and s["documents_retrieved"] > 0 for s in retrievals)
    assert {e["event_type"] for e in workload.document_events} == set(DOCUMENT_STEPS)
    assert {m["role"] for m in workload.chat_messages} == {"user", "assistant"}
    assert all(t["attributes"][MARKER] == 7 for t in workload.traces)
    assert all(t["attributes"][RATE_MARKER] == 20 for t in workload.traces)


def test_about_three_percent_of_traces_fail_with_a_reason(workload: Batch) -> None:
    failed = [t for t in workload.traces if t["status"] == "error"]
    assert 0.015 < len(failed) / len(workload.traces) < 0.06
    assert all(t["error_type"] and t["error_message"] for t in failed)
    assert len({t["error_type"] for t in failed}) >= 3
    assert {t["status"] for t in workload.traces} <= set(TRACE_STATUSES)


def test_every_row_passes_the_writers_validation(workload: Batch) -> None:
    for kind, items in (
        (TRACE, workload.traces),
        (SPAN, workload.spans),
        (CHAT_MESSAGE, workload.chat_messages),
        (DOCUMENT_EVENT, workload.document_events),
    ):
        for item in items:
            kind.validate(item, DEFAULT_LIMITS)
    keys = Counter((s["trace_id"], s["span_id"]) for s in workload.spans)
    assert max(keys.values()) == 1


def test_trace_totals_add_up_and_most_spans_leave_cost_to_the_price_table(
    workload: Batch,
) -> None:
    spans_by_trace: dict[str, list[dict]] = {}
    for span in workload.spans:
        spans_by_trace.setdefault(span["trace_id"], []).append(span)
    for trace in workload.traces[:500]:
        spans = spans_by_trace[trace["trace_id"]]
        priced = [s for s in spans if s.get("model")]
        assert trace["cost_usd"] == sum(
            (token_cost(PRICES, s["model"], s["input_tokens"], s["output_tokens"]) for s in priced),
            Decimal(0),
        )
        assert trace["total_tokens"] == sum(s["input_tokens"] + s["output_tokens"] for s in priced)
        root = next(s for s in spans if s["span_type"] == "chain")
        assert all(s["parent_span_id"] == root["span_id"] for s in spans if s is not root)
        assert all(trace["started_at"] <= s["started_at"] <= trace["ended_at"] for s in spans)
    with_cost = [s for s in workload.spans if s.get("cost_usd") is not None]
    assert 0 < len(with_cost) < 0.03 * len(workload.spans)


def test_traffic_follows_the_time_of_day(workload: Batch) -> None:
    by_hour = Counter(t["started_at"].hour for t in workload.traces)
    assert by_hour[14] > 2.5 * by_hour[3]
    saturday = datetime(2026, 11, 21, 14, tzinfo=UTC)
    assert hourly_load(saturday) < hourly_load(saturday - timedelta(days=4))
    assert 20 * 168 * 0.9 < len(workload.traces) < 20 * 168 * 1.1


def test_late_rows_fall_in_their_window_and_are_marked() -> None:
    start = datetime(2026, 11, 22, 1, tzinfo=UTC)
    batch = Generator(3, PRICES, 10).late_rows(start, start + timedelta(hours=3), 12)
    assert len(batch.traces) == 12
    assert all(start <= t["started_at"] < start + timedelta(hours=3) for t in batch.traces)
    assert all(t["attributes"]["demo.late"] for t in batch.traces)


def test_cost_rounds_like_the_database() -> None:
    assert token_cost(PRICES, "gpt-4o", 1, 0) == Decimal("0.000003")  # 0.0000025 rounds up
    assert token_cost(PRICES, "gpt-4o", 1000, 100) == Decimal("0.003500")
    assert token_cost(PRICES, "unknown-model", 1000, 100) == Decimal("0.000000")


@pytest.mark.parametrize("rate", [0, -1])
def test_traffic_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="traces_per_hour must be positive"):
        Generator(1, PRICES, rate)
