from __future__ import annotations

from bench.ingest_workload import SPANS_PER_TRACE, make_genai_spans
from worker.ingest import DEFAULT_LIMITS
from worker.ingest.items import SPAN


def test_the_benchmark_spans_are_valid_distinct_and_without_cost() -> None:
    spans = make_genai_spans(2_000, seed=3)
    rows = [SPAN.validate(span, DEFAULT_LIMITS) for span in spans]
    assert len({SPAN.key_of(row) for row in rows}) == 2_000
    assert len({span["trace_id"] for span in spans}) == 2_000 // SPANS_PER_TRACE
    assert all("cost_usd" not in span for span in spans)
    assert {span["span_type"] for span in spans} == {"llm"}
    assert all("gen_ai.usage.input_tokens" in span["attributes"] for span in spans)


def test_seeds_give_other_ids_and_the_same_seed_the_same_spans() -> None:
    assert make_genai_spans(10, seed=1) == make_genai_spans(10, seed=1)
    first = {s["span_id"] for s in make_genai_spans(100, seed=1)}
    second = {s["span_id"] for s in make_genai_spans(100, seed=2)}
    assert not first & second
