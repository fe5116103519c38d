from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer, set_span_in_context
from psycopg.rows import dict_row

from tests.oracle.model import datetime_to_ns
from tests.otlp_server import serve_in_thread
from worker.otlp.server import Settings
from worker.rollups import backfill_metrics

# Trace totals as a real client produces them: the official SDK exporter sends a retrieval-only
# trace, a trace whose only LLM call names a model without a price, a trace with one priced call
# and a trace with both. Expected costs come from the list prices of
# sql/incremental/015-model-prices.sql, computed here, never read back.

LIST_PRICES = {  # USD per million tokens: input, output
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
}
MS = timedelta(milliseconds=1)


def cost(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    price_in, price_out = LIST_PRICES[model]
    total = (tokens_in * price_in + tokens_out * price_out) / Decimal(1_000_000)
    return total.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


@pytest.fixture(scope="module")
def endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(migrated_database_url)) as url:
        yield url


def llm(
    tracer: Tracer, parent: Any, at: datetime, model: str, provider: str, tokens: tuple[int, int]
) -> None:
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.provider.name": provider,
        "gen_ai.usage.input_tokens": tokens[0],
        "gen_ai.usage.output_tokens": tokens[1],
    }
    span = tracer.start_span(
        f"chat {model}",
        set_span_in_context(parent),
        attributes=attributes,
        start_time=datetime_to_ns(at),
    )
    span.end(end_time=datetime_to_ns(at + 700 * MS))


def turn(tracer: Tracer, at: datetime, name: str, calls: list[tuple[str, str, tuple[int, int]]]):
    root = tracer.start_span(
        name, attributes={"gen_ai.operation.name": "invoke_agent"}, start_time=datetime_to_ns(at)
    )
    retrieval = tracer.start_span(
        "retrieval kb",
        set_span_in_context(root),
        attributes={"gen_ai.operation.name": "retrieval"},
        start_time=datetime_to_ns(at + MS),
    )
    retrieval.end(end_time=datetime_to_ns(at + 40 * MS))
    for i, (model, provider, tokens) in enumerate(calls):
        llm(tracer, root, at + (50 + i * 800) * MS, model, provider, tokens)
    root.end(end_time=datetime_to_ns(at + 3000 * MS))
    return f"{root.get_span_context().trace_id:032x}"


def record(hour: datetime) -> tuple[list[ReadableSpan], dict[str, str]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.trace_totals")
    minute = timedelta(minutes=1)
    ids = {
        "retrieval_only": turn(tracer, hour + 5 * minute, "search", []),
        "unknown_model": turn(
            tracer, hour + 10 * minute, "ask", [("llama-3.1-70b-instruct", "meta", (1200, 300))]
        ),
        "priced": turn(tracer, hour + 15 * minute, "ask", [("gpt-4o", "openai", (1234, 567))]),
        "mixed": turn(
            tracer,
            hour + 20 * minute,
            "ask",
            [("gpt-5-preview", "openai", (500, 50)), ("gpt-4o-mini", "openai", (3333, 777))],
        ),
    }
    provider.shutdown()
    return list(memory.get_finished_spans()), ids


def test_totals_of_traces_without_llm_or_price(endpoint: str, clean_observability: str) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    spans, ids = record(hour)
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=30)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    with psycopg.connect(clean_observability, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(
            "select trace_id, total_tokens, cost_usd from observability.traces"
        ).fetchall()
    totals = {r["trace_id"]: (r["total_tokens"], r["cost_usd"]) for r in rows}
    priced = cost("gpt-4o", 1234, 567)
    known_part = cost("gpt-4o-mini", 3333, 777)
    assert totals == {
        ids["retrieval_only"]: (None, None),  # nothing to sum: unknown, not 0 nor a cap
        ids["unknown_model"]: (1500, None),  # tokens known, cost unknown
        ids["priced"]: (1234 + 567, priced),
        ids["mixed"]: (500 + 50 + 3333 + 777, known_part),  # the priced call's cost
    }

    backfill_metrics(hour, hour + timedelta(hours=1), "hour", database_url=clean_observability)
    with psycopg.connect(clean_observability, autocommit=True, row_factory=dict_row) as conn:
        [rollup] = conn.execute(
            "select count, sum from observability.metrics where granularity = 'hour'"
            " and bucket = %s and metric_type = 'trace.cost_usd' and dimension_type = 'overall'",
            [hour],
        ).fetchall()
        [synced] = conn.execute(
            "select count, sum_value from observability.metrics_aggregates"
            " where granularity = 'hour' and bucket_time = %s"
            " and metric_type = 'trace.cost_usd' and dimension_type = 'overall'",
            [hour],
        ).fetchall()
    assert (rollup["count"], rollup["sum"]) == (2, float(priced + known_part))
    assert (synced["count"], synced["sum_value"]) == (2, float(priced + known_part))
