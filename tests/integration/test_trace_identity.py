from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.otlp_encode import make_request, make_span
from tests.otlp_server import serve_in_thread
from worker.ingest import write_batch
from worker.otlp.server import Settings
from worker.rollups.recost import recost

# Expected figures here come from what the test sends (the price rows of
# sql/idempotent/006-model-prices.sql for gpt-4o: 2.50 and 10.00 USD per million tokens), never
# from re-reading what was stored.
GPT4O_IN, GPT4O_OUT = Decimal("2.50"), Decimal("10.00")
TRACE = "5af7651916cd43dd8448eb211c80319c"
ROOT, ROOT2, CHILD, CHILD2 = (
    "b7ad6b7169203331",
    "b7ad6b7169203332",
    "c7ad6b7169203331",
    "c7ad6b7169203332",
)
HOUR_NS = 3600 * 10**9
# Three hours ago, on the hour: inside the accepted times and in a complete hour.
START = (int(time.time()) // 3600 - 3) * HOUR_NS
PROTOBUF = {"content-type": "application/x-protobuf"}


def at(nanos: int) -> datetime:
    return datetime.fromtimestamp(nanos // 1000 / 1e6, UTC)


@pytest.fixture(scope="module")
def endpoint(migrated_database_url: str) -> Iterator[str]:
    with serve_in_thread(Settings(migrated_database_url)) as url:
        yield url


def post(url: str, spans: list[Any]) -> Any:
    body = make_request(spans).SerializeToString()
    response = httpx.post(f"{url}/v1/traces", content=body, headers=PROTOBUF, timeout=60)
    assert response.status_code == 200, response.content
    return ExportTraceServiceResponse.FromString(response.content).partial_success


def fetch(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def llm(span_id: str, start: int, model: str | None, tokens: tuple[int, int] | None) -> Any:
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}
    if model is not None:
        attributes["gen_ai.request.model"] = model
    if tokens is not None:
        attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"] = tokens
    return make_span(
        TRACE, span_id, "chat", start, start + 10**9, parent_span_id=ROOT, attributes=attributes
    )


def retrieval(span_id: str, start: int) -> Any:
    attributes = {"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": "kb-1"}
    return make_span(
        TRACE, span_id, "search", start, start + 10**9, parent_span_id=ROOT, attributes=attributes
    )


def root(span_id: str = ROOT, start: int = START, end: int | None = None, **kw: Any) -> Any:
    return make_span(TRACE, span_id, kw.pop("name", "turn"), start, end or start + 5 * 10**9, **kw)


def totals(url: str) -> list[tuple[Any, ...]]:
    return fetch(url, "select total_tokens, cost_usd from observability.traces")


def test_a_trace_without_llm_spans_has_unknown_totals(
    endpoint: str, clean_observability: str
) -> None:
    # least(NULL, cap) is the cap: a retrieval-only trace had 2147483647 tokens and $9999.99.
    post(endpoint, [root(), retrieval(CHILD, START + 10**8)])
    assert totals(clean_observability) == [(None, None)]


def test_an_unknown_model_leaves_the_cost_unknown_and_tokens_summed(
    endpoint: str, clean_observability: str
) -> None:
    post(endpoint, [root(), llm(CHILD, START + 10**8, "no-such-model-anywhere", (120, 30))])
    assert totals(clean_observability) == [(150, None)]


def test_a_partly_priced_trace_sums_its_known_costs(
    endpoint: str, clean_observability: str
) -> None:
    post(
        endpoint,
        [
            root(),
            llm(CHILD, START + 10**8, "gpt-4o", (1000, 200)),
            llm(CHILD2, START + 2 * 10**8, "no-such-model-anywhere", (5, 5)),
        ],
    )
    cost = (1000 * GPT4O_IN + 200 * GPT4O_OUT) / 1_000_000
    assert totals(clean_observability) == [(1210, cost)]


def test_two_roots_make_one_trace_from_the_earliest_to_the_latest(
    endpoint: str, clean_observability: str
) -> None:
    late = START + 60 * 10**9
    # The later root first, in its own request; then the earlier one with a child.
    post(endpoint, [root(ROOT2, late, late + 90 * 10**9, name="second")])
    post(endpoint, [root(ROOT, START, START + 5 * 10**9), llm(CHILD, START, "gpt-4o", (10, 1))])
    rows = fetch(
        clean_observability,
        "select started_at, ended_at, duration_ms, name, total_tokens from observability.traces",
    )
    assert rows == [(at(START), at(late + 90 * 10**9), 150_000, "turn", 11)]


def test_a_root_failing_marks_the_trace_failed(endpoint: str, clean_observability: str) -> None:
    post(endpoint, [root(ROOT, START), root(ROOT2, START + 10**9, error="boom")])
    assert fetch(clean_observability, "select status, name from observability.traces") == [
        ("error", "turn")
    ]


def test_a_span_resent_with_another_start_is_stored_once(
    endpoint: str, clean_observability: str
) -> None:
    post(endpoint, [root(), llm(CHILD, START + 10**8, "gpt-4o", (100, 10))])
    moved = START + 2 * HOUR_NS  # another hour, another chunk perhaps
    post(endpoint, [llm(CHILD, moved, "gpt-4o", (100, 10))])
    rows = fetch(
        clean_observability,
        "select started_at from observability.spans where span_id = %s",
        [CHILD],
    )
    assert rows == [(at(moved),)]
    assert totals(clean_observability) == [(110, Decimal("0.000350"))]


def test_the_only_root_resent_with_another_start_moves_the_trace(
    endpoint: str, clean_observability: str
) -> None:
    post(endpoint, [root(ROOT, START)])
    post(endpoint, [root(ROOT, START + HOUR_NS, START + HOUR_NS + 10**9)])
    assert fetch(
        clean_observability, "select started_at, duration_ms from observability.traces"
    ) == [(at(START + HOUR_NS), 1000)]


def test_spans_far_in_the_future_or_past_are_refused_per_item(
    endpoint: str, clean_observability: str
) -> None:
    future = (int(time.time()) + 2 * 3600) * 10**9  # the default allowance is one hour
    year_2100 = 4_102_444_800 * 10**9
    epoch = 10**9
    answer = post(
        endpoint,
        [
            root(),
            llm(CHILD, future, "gpt-4o", (1, 1)),
            llm(CHILD2, year_2100, "gpt-4o", (1, 1)),
            llm("d7ad6b7169203331", epoch, "gpt-4o", (1, 1)),
        ],
    )
    assert answer.rejected_spans == 3
    assert "more than 1 hour in the future" in answer.error_message
    assert "before the raw-data retention horizon" in answer.error_message
    assert fetch(clean_observability, "select span_id from observability.spans") == [(ROOT,)]


def test_the_future_allowance_is_configurable(
    migrated_database_url: str, clean_observability: str
) -> None:
    settings = Settings(migrated_database_url, max_future=timedelta(hours=3))
    with serve_in_thread(settings) as url:
        soon = (int(time.time()) + 2 * 3600) * 10**9
        assert post(url, [root(ROOT, soon)]).rejected_spans == 0
        later = (int(time.time()) + 4 * 3600) * 10**9
        assert post(url, [root(ROOT2, later)]).rejected_spans == 1


def test_the_bulk_writer_keeps_one_row_per_id_and_applies_the_time_policy(
    clean_observability: str,
) -> None:
    start = at(START)
    trace = {"trace_id": TRACE, "name": "t", "operation_type": "chat", "status": "ok"}
    span = {"trace_id": TRACE, "span_id": CHILD, "name": "s", "span_type": "tool"}
    with psycopg.connect(clean_observability, autocommit=True) as conn:
        write_batch(
            conn, traces=[{**trace, "started_at": start}], spans=[{**span, "started_at": start}]
        )
        later = start + timedelta(minutes=90)
        result = write_batch(
            conn,
            traces=[{**trace, "started_at": later}],
            spans=[
                {**span, "started_at": later},
                {**span, "span_id": CHILD2, "started_at": datetime(2100, 1, 1, tzinfo=UTC)},
            ],
            document_events=[
                {
                    "document_id": "00000000-0000-0000-0000-000000000001",
                    "event_type": "parse",
                    "status": "ok",
                    "created_at": datetime(1999, 1, 1, tzinfo=UTC),
                }
            ],
        )
    assert [(r.kind, r.index) for r in result.rejected] == [("span", 1), ("document_event", 0)]
    assert "in the future" in result.rejected[0].reason
    assert "retention horizon" in result.rejected[1].reason
    assert fetch(clean_observability, "select started_at from observability.traces") == [(later,)]
    assert fetch(clean_observability, "select span_id, started_at from observability.spans") == [
        (CHILD, later)
    ]


def test_a_span_longer_than_duration_ms_holds_is_stored_with_a_warning(
    clean_observability: str,
) -> None:
    start = at(START) - timedelta(days=27)
    span = {"trace_id": TRACE, "span_id": CHILD, "name": "s", "span_type": "tool"}
    with psycopg.connect(clean_observability, autocommit=True) as conn:
        result = write_batch(
            conn, spans=[{**span, "started_at": start, "ended_at": start + timedelta(days=26)}]
        )
    assert result.written["span"] == 1
    assert result.warnings == [
        f"span {TRACE}/{CHILD}: duration_ms stored as NULL: 2,246,400,000 ms is more than the "
        "column holds (2,147,483,647 ms, about 24.8 days)"
    ]
    assert fetch(clean_observability, "select duration_ms from observability.spans") == [(None,)]


def test_recost_repairs_every_summed_trace_in_its_window(
    endpoint: str, clean_observability: str
) -> None:
    # A trace whose spans did not change still gets its totals summed again (an earlier
    # version stored the cap in them).
    post(endpoint, [root(), retrieval(CHILD, START + 10**8)])
    with psycopg.connect(clean_observability, autocommit=True) as conn:
        conn.execute("update observability.traces set total_tokens = 2147483647, cost_usd = 9999")
        recost(conn, at(START) - timedelta(hours=1), at(START) + timedelta(hours=1))
    assert totals(clean_observability) == [(None, None)]


def test_cost_coverage_counts_llm_spans_without_a_cost_by_model(
    endpoint: str, clean_observability: str
) -> None:
    post(
        endpoint,
        [
            root(),
            llm(CHILD, START + 10**8, "gpt-4o", (1000, 200)),
            llm(CHILD2, START + 2 * 10**8, "no-such-model-anywhere", (5, 5)),
            llm("d7ad6b7169203331", START + 3 * 10**8, "gpt-4o", None),
        ],
    )
    # Another test may have materialized this hour before: bring it up to date.
    with psycopg.connect(clean_observability, autocommit=True) as conn:
        conn.execute(
            "call refresh_continuous_aggregate('observability.llm_spans_hourly', %s, %s)",
            [at(START), at(START + HOUR_NS)],
        )
    rows = fetch(
        clean_observability,
        "select dimension_type, dimension_value, count, sum, min, max from observability.metrics "
        "where metric_type = 'llm.cost_unknown' and granularity = 'hour' and bucket = %s "
        "order by 1, 2",
        [at(START)],
    )
    assert rows == [
        ("model", "gpt-4o", 2, 1.0, 0.0, 1.0),
        ("model", "no-such-model-anywhere", 1, 1.0, 1.0, 1.0),
        ("overall", "", 3, 2.0, 0.0, 1.0),
        ("provider", "openai", 3, 2.0, 0.0, 1.0),
    ]


def test_a_span_moved_days_away_is_still_found(endpoint: str, clean_observability: str) -> None:
    # The writers look for a trace's stored rows in the range observability.trace_extents
    # records for it; a move of days, into another chunk, stays one row.
    post(endpoint, [root(), llm(CHILD, START + 10**8, "gpt-4o", (100, 10))])
    days_ago = START - 5 * 24 * HOUR_NS
    post(endpoint, [llm(CHILD, days_ago, "gpt-4o", (100, 10))])
    post(endpoint, [llm(CHILD, START + 2 * 10**8, "gpt-4o", (100, 20))])
    rows = fetch(clean_observability, "select started_at, output_tokens from observability.spans")
    assert sorted(rows) == [(at(START), None), (at(START + 2 * 10**8), 20)]
    assert fetch(
        clean_observability,
        "select first_started_at, last_started_at from observability.trace_extents",
    ) == [(at(days_ago), at(START + 2 * 10**8))]
    assert totals(clean_observability) == [(120, Decimal("0.000450"))]


def test_pruning_forgets_ranges_that_retention_overtook(clean_observability: str) -> None:
    with psycopg.connect(clean_observability, autocommit=True) as conn:
        write_batch(
            conn,
            spans=[{"trace_id": TRACE, "span_id": CHILD, "name": "s", "span_type": "tool",
                    "started_at": at(START)}],
        )  # fmt: skip
        conn.execute(
            "insert into observability.trace_extents values (%s, %s, %s)",
            ["f" * 32, datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)],
        )
        conn.execute("call observability.prune_trace_extents(0, '{}')")
        kept = conn.execute("select trace_id from observability.trace_extents").fetchall()
        job = conn.execute(
            "select count(*) from timescaledb_information.jobs"
            " where proc_schema = 'observability' and proc_name = 'prune_trace_extents'"
        ).fetchone()
    assert kept == [(TRACE,)]
    assert job == (1,)


def test_a_price_past_the_cost_column_is_null_with_a_warning(clean_observability: str) -> None:
    # 1e9 input and 1e9 output tokens of gpt-4o: 2,500 + 10,000 USD, past numeric(10, 6).
    span = {"trace_id": TRACE, "span_id": CHILD, "name": "s", "span_type": "llm",
            "model": "gpt-4o", "provider": "openai", "input_tokens": 10**9,
            "output_tokens": 10**9, "started_at": at(START)}  # fmt: skip
    with psycopg.connect(clean_observability, autocommit=True) as conn:
        result = write_batch(conn, spans=[span])
    assert result.warnings == [
        f"span {TRACE}/{CHILD}: cost_usd stored as NULL: its price comes to 12500.000000 USD, "
        "more than the column holds (9999.999999)"
    ]
    assert fetch(clean_observability, "select cost_usd from observability.spans") == [(None,)]
