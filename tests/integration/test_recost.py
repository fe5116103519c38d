from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

import worker.rollups.recost as recost_module
from tests.otlp_encode import make_request, make_span
from worker.cli.main import main
from worker.ingest import COST_SOURCE_KEY, write_batch
from worker.otlp.mapping import map_request
from worker.otlp.store import store
from worker.rollups.recost import RecostError, recost
from worker.rollups.refresh import ConcurrentRefresh, refresh_bounds
from worker.rollups.windows import bucket_floor

# A model of its own, so that rolled-up rows of other tests never mix with these.
MODEL = "recost-test-model"
PROVIDER = "recost-test"
# Four days back: out of the hourly policy's reach (now - 3 days .. now), so only recost's own
# refresh can bring the rollups up to date.
DAY = (datetime.now(UTC) - timedelta(days=4)).replace(hour=0, minute=0, second=0, microsecond=0)
WEEK = bucket_floor(DAY, "week")
ROLLUPS = (
    "llm_spans_hourly",
    "llm_spans_daily",
    "llm_spans_weekly",
    "traces_hourly",
    "traces_daily",
    "traces_weekly",
)
OPERATION = "recost_test_op"
# (minutes after DAY + 10 h, application cost): 1000 input and 500 output tokens each.
SPANS = ((15, None), (45, None), (90, None), (150, None), (190, None), (155, Decimal("1")))


def refresh(conn: psycopg.Connection, start: datetime, end: datetime) -> None:
    """As the policies would: whole buckets that have ended, never the open week."""
    now = datetime.now(UTC)
    for rollup in ROLLUPS:
        level = {"hourly": "hour", "daily": "day", "weekly": "week"}[rollup.rpartition("_")[2]]
        bounds = refresh_bounds(level, start, end, now=now, raw_horizon=None)
        if bounds is not None:
            conn.execute(
                "call public.refresh_continuous_aggregate(%s::regclass, %s, %s)",
                [f"observability.{rollup}", *bounds],
            )


def add_price(conn: psycopg.Connection, effective_from: datetime, inp: str, out: str) -> None:
    conn.execute(
        "insert into observability.model_prices"
        " (model, provider, effective_from, input_usd_per_million, output_usd_per_million)"
        " values (%s, %s, %s, %s, %s)",
        [MODEL, PROVIDER, effective_from, Decimal(inp), Decimal(out)],
    )


@pytest.fixture
def db(clean_observability: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(clean_observability, autocommit=True) as conn:
        add_price(conn, DAY - timedelta(days=30), "1.00", "2.00")
        spans = [
            {
                "trace_id": f"{n + 1:032x}",
                "span_id": f"{n + 1:016x}",
                "started_at": DAY + timedelta(hours=10, minutes=minutes),
                "name": "chat",
                "span_type": "llm",
                "provider": PROVIDER,
                "model": MODEL,
                "input_tokens": 1000,
                "output_tokens": 500,
                "cost_usd": cost,
            }
            for n, (minutes, cost) in enumerate(SPANS)
        ]
        assert write_batch(conn, spans=spans).written["span"] == len(SPANS)
        refresh(conn, WEEK, WEEK + timedelta(weeks=1))
        try:
            yield conn
        finally:
            conn.execute("delete from observability.model_prices where model = %s", [MODEL])
            conn.execute("delete from observability.spans where model = %s", [MODEL])
            conn.execute("delete from observability.traces where operation_type = %s", [OPERATION])
            refresh(conn, WEEK, WEEK + timedelta(weeks=1))


def cost_sums(conn: psycopg.Connection) -> dict[tuple[str, datetime], Decimal]:
    rows = conn.execute(
        "select granularity, bucket, sum from observability.metrics"
        " where metric_type = 'llm.cost_usd' and dimension_type = 'model'"
        " and dimension_value = %s",
        [MODEL],
    ).fetchall()
    return {(g, b): Decimal(str(s)).quantize(Decimal("0.000001")) for g, b, s in rows}


def expected(after_noon: str) -> dict[tuple[str, datetime], Decimal]:
    """Sums per bucket with the computed spans from 12:00 on costing after_noon each."""
    old, new, app = Decimal("0.002"), Decimal(after_noon), Decimal("1")
    hour = DAY + timedelta(hours=10)
    sums = {
        ("hour", hour): 2 * old,
        ("hour", hour + timedelta(hours=1)): old,
        ("hour", hour + timedelta(hours=2)): new + app,
        ("hour", hour + timedelta(hours=3)): new,
        ("day", DAY): 3 * old + 2 * new + app,
        ("week", WEEK): 3 * old + 2 * new + app,
    }
    return {k: v.quantize(Decimal("0.000001")) for k, v in sums.items()}


def test_rollups_show_the_new_costs_after_a_price_change_and_recost(
    db: psycopg.Connection,
) -> None:
    assert cost_sums(db) == expected("0.002")
    add_price(db, DAY + timedelta(hours=12), "3.00", "4.00")
    assert cost_sums(db) == expected("0.002"), "materialized rollups keep the old costs"

    result = recost(db, DAY, DAY + timedelta(days=1))

    assert (result.candidates, result.changed) == (5, 2)
    assert (result.cost_before, result.cost_after) == (Decimal("0.004"), Decimal("0.010"))
    assert cost_sums(db) == expected("0.005")
    windows = [(r.rollup, r.start, r.end) for r in result.refreshed]
    # A week that has not ended is left to real-time aggregation, never materialized.
    week_ended = WEEK + timedelta(weeks=1) <= datetime.now(UTC)
    assert windows == [
        ("observability.llm_spans_hourly", DAY, DAY + timedelta(days=1)),
        ("observability.llm_spans_daily", DAY, DAY + timedelta(days=1)),
        *([("observability.llm_spans_weekly", WEEK, WEEK + timedelta(weeks=1))] * week_ended),
        ("observability.traces_hourly", DAY, DAY + timedelta(days=1)),
        ("observability.traces_daily", DAY, DAY + timedelta(days=1)),
        *([("observability.traces_weekly", WEEK, WEEK + timedelta(weeks=1))] * week_ended),
    ]
    app = db.execute(
        "select cost_usd, attributes from observability.spans where cost_usd >= 1"
    ).fetchone()
    assert app == (Decimal("1.000000"), {}), "the application's own cost is kept"


def test_a_dry_run_changes_nothing(db: psycopg.Connection) -> None:
    add_price(db, DAY + timedelta(hours=12), "3.00", "4.00")
    result = recost(db, DAY, DAY + timedelta(days=1), dry_run=True)
    assert (result.changed, result.cost_after, result.refreshed) == (2, Decimal("0.010"), [])
    assert cost_sums(db) == expected("0.002")
    costs = db.execute("select sum(cost_usd) from observability.spans").fetchone()
    assert costs == (Decimal("1.010000"),)


def test_the_window_and_the_model_filter_limit_the_recost(db: psycopg.Connection) -> None:
    add_price(db, DAY - timedelta(days=1), "3.00", "4.00")
    other = recost(db, DAY, DAY + timedelta(days=1), model="gpt-4o")
    levels = 3 if WEEK + timedelta(weeks=1) <= datetime.now(UTC) else 2  # an open week: no
    assert (other.candidates, other.changed, len(other.refreshed)) == (0, 0, 2 * levels)
    early = recost(db, DAY, DAY + timedelta(hours=11))  # 10:15 and 10:45 only
    assert early.changed == 2
    assert cost_sums(db)[("hour", DAY + timedelta(hours=10))] == Decimal("0.010000")
    assert cost_sums(db)[("hour", DAY + timedelta(hours=11))] == Decimal("0.002000")


def test_a_span_without_a_price_gets_one_when_a_price_is_added(db: psycopg.Connection) -> None:
    db.execute("delete from observability.model_prices where model = %s", [MODEL])
    dropped = recost(db, DAY, DAY + timedelta(days=1))
    assert (dropped.changed, dropped.cost_after) == (5, Decimal(0))
    marked = db.execute(
        "select count(*) from observability.spans where attributes ? %s", [COST_SOURCE_KEY]
    ).fetchone()
    assert marked == (0,)
    add_price(db, DAY - timedelta(days=1), "1.00", "2.00")
    restored = recost(db, DAY, DAY + timedelta(days=1))
    assert (restored.candidates, restored.changed) == (5, 5)
    assert cost_sums(db) == expected("0.002")


def test_recost_reaches_compressed_chunks(db: psycopg.Connection) -> None:
    db.execute(
        "select public.compress_chunk(c, if_not_compressed => true)"
        " from public.show_chunks('observability.spans') as c"
    )
    add_price(db, DAY + timedelta(hours=12), "3.00", "4.00")
    assert recost(db, DAY, DAY + timedelta(days=1)).changed == 2
    assert cost_sums(db) == expected("0.005")


def test_the_command_prints_a_summary(
    db: psycopg.Connection, capsys: pytest.CaptureFixture[str], clean_observability: str
) -> None:
    add_price(db, DAY + timedelta(hours=12), "3.00", "4.00")
    args = [
        "recost",
        "--from",
        DAY.date().isoformat(),
        "--to",
        (DAY + timedelta(days=1)).isoformat(),
    ]
    assert main([*args, "--dry-run", "--database-url", clean_observability]) == 0
    out = capsys.readouterr().out
    assert "cost changed: 2 (total 0.004000 -> 0.010000 USD)" in out
    assert "dry run: nothing was written" in out
    assert main([*args, "--model", MODEL, "--database-url", clean_observability]) == 0
    out = capsys.readouterr().out
    assert f"model {MODEL}" in out
    assert "refreshed observability.llm_spans_daily from" in out
    assert cost_sums(db) == expected("0.005")


def trace_costs(conn: psycopg.Connection) -> dict[str, Decimal | None]:
    rows = conn.execute(
        "select name, cost_usd from observability.traces where operation_type = %s", [OPERATION]
    )
    return dict(rows.fetchall())


def trace_cost_sum(conn: psycopg.Connection) -> Decimal | None:
    row = conn.execute(
        "select sum from observability.metrics where metric_type = 'trace.cost_usd'"
        " and granularity = 'day' and dimension_type = 'operation_type'"
        " and dimension_value = %s and bucket = %s",
        [OPERATION, DAY],
    ).fetchone()
    return None if row is None else Decimal(str(row[0])).quantize(Decimal("0.000001"))


def test_trace_costs_summed_from_spans_are_recomputed(
    db: psycopg.Connection, clean_observability: str
) -> None:
    # One trace received over OTLP (its cost is the sum of its spans'), one written with a
    # cost of the application's own, which recost must leave alone.
    trace_id = "f" * 32
    start = int((DAY + timedelta(hours=13)).timestamp() * 1e9)
    llm = {
        "gen_ai.request.model": MODEL,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 500,
    }
    request = make_request(
        [
            make_span(
                trace_id,
                "a" * 16,
                "otlp turn",
                start,
                start + 10**9,
                attributes={"gen_ai.operation.name": OPERATION},
            ),
            make_span(
                trace_id,
                "b" * 16,
                "chat",
                start,
                start + 10**9,
                parent_span_id="a" * 16,
                attributes=llm,
            ),
        ]
    )
    with psycopg.connect(clean_observability) as conn:
        assert store(conn, map_request(request)).refused == []
    app_trace = {
        "trace_id": "e" * 32,
        "started_at": DAY + timedelta(hours=13),
        "name": "app turn",
        "operation_type": OPERATION,
        "cost_usd": Decimal("0.5"),
    }
    assert write_batch(db, traces=[app_trace]).written["trace"] == 1
    refresh(db, WEEK, WEEK + timedelta(weeks=1))
    assert trace_costs(db) == {"otlp turn": Decimal("0.002"), "app turn": Decimal("0.5")}
    assert trace_cost_sum(db) == Decimal("0.502000")

    add_price(db, DAY + timedelta(hours=12), "3.00", "4.00")
    result = recost(db, DAY, DAY + timedelta(days=1))

    assert result.traces_changed == 1
    assert trace_costs(db) == {"otlp turn": Decimal("0.005"), "app turn": Decimal("0.5")}
    assert trace_cost_sum(db) == Decimal("0.505000"), "the traces rollups are refreshed"


def test_a_recost_whose_refresh_failed_can_be_run_again(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_price(db, DAY + timedelta(hours=12), "3.00", "4.00")

    def busy(conn: psycopg.Connection, window: object, sleep: object) -> None:
        raise ConcurrentRefresh("observability.traces_hourly is being refreshed by another session")

    monkeypatch.setattr(recost_module, "_refresh", busy)
    with pytest.raises(ConcurrentRefresh):
        recost(db, DAY, DAY + timedelta(days=1))
    assert cost_sums(db) == expected("0.002"), "costs changed, rollups not refreshed"
    monkeypatch.undo()

    again = recost(db, DAY, DAY + timedelta(days=1))
    assert again.changed == 0
    assert cost_sums(db) == expected("0.005")


def test_the_command_reports_a_busy_refresh_as_such(
    db: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clean_observability: str,
) -> None:
    def busy(conn: psycopg.Connection, window: object, sleep: object) -> None:
        raise ConcurrentRefresh("observability.traces_hourly is being refreshed by another session")

    monkeypatch.setattr(recost_module, "_refresh", busy)
    args = ["recost", "--from", DAY.isoformat(), "--to", (DAY + timedelta(days=1)).isoformat()]
    assert main([*args, "--database-url", clean_observability]) == 1
    assert "another refresh of the rollups is running" in caplog.text
    assert "run the same recost again" in caplog.text
    assert "cannot reach the database" not in caplog.text


def test_recost_refuses_bad_arguments(db: psycopg.Connection, clean_observability: str) -> None:
    with pytest.raises(RecostError, match="must be after start"):
        recost(db, DAY, DAY)
    with pytest.raises(RecostError, match="must carry a time zone"):
        recost(db, DAY.replace(tzinfo=None), DAY + timedelta(days=1))
    with (
        psycopg.connect(clean_observability) as in_transaction,
        pytest.raises(RecostError, match="autocommit"),
    ):
        recost(in_transaction, DAY, DAY + timedelta(days=1))
