from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.oracle.compare import A, metric_row, percentile_bounds
from tests.oracle.expected import (
    INT4_MAX,
    Price,
    SpanRow,
    canonical_provider,
    otlp_trace,
    price_cost,
)
from tests.oracle.rollup import Cell, bucket

# The oracle's own rules, on cases small enough to work out by hand.

T0 = datetime(2026, 11, 16, 10, 0, tzinfo=UTC)
PRICES = [
    Price("gpt-4o", "openai", datetime(2024, 1, 1, tzinfo=UTC), Decimal("2.5"), Decimal("10")),
    Price("gpt-4o", "openai", T0, Decimal("5"), Decimal("20")),
    Price("gemini-1.5-flash", "google", T0 - timedelta(days=9), Decimal("0.075"), Decimal("0.3")),
]


def span(span_id: str, parent: str | None, start: datetime, **values: object) -> SpanRow:
    fields: dict[str, object] = {
        "trace_id": "a" * 32,
        "span_id": span_id,
        "parent_span_id": parent,
        "started_at": start,
        "ended_at": start + timedelta(seconds=1),
        "duration_ms": 1000,
        "span_type": "llm",
        "status": "ok",
        "provider": None,
        "model": None,
        "input_tokens": None,
        "output_tokens": None,
        "time_to_first_token_ms": None,
        "cost_usd": None,
        "kb_id": None,
        "name": span_id,
        "error_type": None,
        "error_message": None,
    }
    fields.update(values)
    return SpanRow(**fields)  # type: ignore[arg-type]


def test_prices_in_effect_at_the_start_with_aliases_and_half_up_rounding() -> None:
    before = T0 - timedelta(microseconds=1)
    assert price_cost(PRICES, "gpt-4o", "azure.ai.openai", before, 1, 0) == Decimal("0.000003")
    assert price_cost(PRICES, "gpt-4o", "OpenAI", T0, 1, None) == Decimal("0.000005")
    # 20 * 0.075 / 1e6 = 0.0000015: half a micro-dollar rounds up
    assert price_cost(PRICES, "gemini-1.5-flash", "gcp.vertex_ai", T0, 20, None) == Decimal(
        "0.000002"
    )
    assert price_cost(PRICES, "gpt-4o", "anthropic", T0, 10, 10) is None  # another provider
    assert price_cost(PRICES, "gpt-4o", None, T0, 10, 10) == Decimal("0.000250")  # any provider
    assert price_cost(PRICES, "gpt-4o", "openai", T0, None, None) is None  # no usage
    assert price_cost(PRICES, "GPT-4o", "openai", T0, 10, 10) is None  # names are exact
    assert price_cost(PRICES, "gpt-4o", "openai", T0, 0, 500_000_000) is None  # 10,000 USD
    assert canonical_provider("MistralAI") == "mistral_ai"


def test_trace_totals_are_unknown_rather_than_zero_or_capped() -> None:
    root = span("r", None, T0, span_type="agent")
    assert otlp_trace("a" * 32, [root, span("c", "r", T0)]).total_tokens is None  # type: ignore[union-attr]
    big = [span(f"c{i}", "r", T0, input_tokens=INT4_MAX - 1, output_tokens=None) for i in (1, 2)]
    trace = otlp_trace("a" * 32, [root, *big])
    assert trace is not None and trace.total_tokens is None and trace.cost_usd is None
    costly = [span(f"c{i}", "r", T0, cost_usd=Decimal("5000")) for i in (1, 2)]
    assert otlp_trace("a" * 32, [root, *costly]).cost_usd is None  # type: ignore[union-attr]
    assert otlp_trace("a" * 32, [span("c", "r", T0, input_tokens=3)]) is None  # no root, no row


def test_a_trace_spans_its_roots_and_is_named_by_the_earliest() -> None:
    late = span("r2", None, T0 + timedelta(minutes=5), status="error", name="second")
    early = span("r1", None, T0, ended_at=T0 + timedelta(seconds=2), name="first")
    trace = otlp_trace("a" * 32, [late, early])
    assert trace is not None
    assert (trace.name, trace.status, trace.started_at) == ("first", "error", T0)
    assert trace.duration_ms == 301_000


def test_buckets_are_utc_and_weeks_start_on_monday() -> None:
    last = datetime(2026, 11, 15, 23, 59, 59, 999_999, tzinfo=UTC)  # a Sunday
    assert bucket(last, "week") == datetime(2026, 11, 9, tzinfo=UTC)
    assert bucket(last + timedelta(microseconds=1), "week") == datetime(2026, 11, 16, tzinfo=UTC)
    assert bucket(last, "hour") == datetime(2026, 11, 15, 23, tzinfo=UTC)


def test_percentile_bound_and_exact_sums() -> None:
    values = [float(v) for v in range(1, 101)]
    lo, hi = percentile_bounds(values, 0.95)  # h = 94.05: ranks 95 and 96
    assert lo < 95 * (1 - A) + 1e-6 and hi > 96 * (1 + A) - 1e-6
    row = metric_row("llm.cost_usd", Cell([Decimal("0.1"), Decimal("0.2")]))
    assert row["sum"] == 0.3  # the exact sum converted once, not 0.1 + 0.2 in float
    errors = metric_row("trace.errors", Cell([1, 0, 1]))
    assert (errors["count"], errors["sum"], errors["min"], errors["max"]) == (3, 2.0, 0.0, 1.0)
