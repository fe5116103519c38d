from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.celery_support import celery_broker, sample, start_worker
from tests.oracle import observed
from tests.oracle.compare import Diff, compare_metrics, report
from tests.oracle.expected import Oracle, read_prices
from tests.oracle.model import SDK, OtlpExport, OtlpSpan, Step, datetime_to_ns
from tests.oracle.rollup import GRANULARITIES, WIDTHS, bucket, metric_cells
from tests.oracle.run import _deliveries, check, sync
from tests.oracle.send import Sender, endpoint
from tests.oracle.traffic import generate
from worker.cli.main import main
from worker.ingest import write_batch
from worker.monitoring.exporter import build_registry
from worker.rollups import aggregate_observability_metrics, backfill_metrics
from worker.rollups.windows import bucket_floor
from worker.schema.migrate import CONNECT_ARGS

# Late data (issue: rows written into synced hours, days and weeks, some in compressed chunks,
# some older than every refresh window, reach the rollups and metrics_aggregates after one
# scheduled run of each granularity, with no backfill). The scheduled run is called as the
# beat task calls it: aggregate_observability_metrics(granularity), no window.

__all__ = ["celery_broker"]

SEED = 20261203
TRACES = 160
DOCUMENTS = 60
# The widest refresh policy window (weekly rollups: 21 days back).
OLDEST_POLICY_WINDOW = timedelta(days=21)


@pytest.fixture(scope="module")
def otlp_endpoint(migrated_database_url: str) -> Iterator[str]:
    with endpoint(migrated_database_url) as url:
        yield url


@pytest.fixture
def late_db(clean_observability: str) -> Iterator[str]:
    """The migrated database; afterwards no raw or rolled-up rows of the test are left."""
    yield clean_observability
    observed.reset(clean_observability, datetime.now(UTC))


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, **CONNECT_ARGS)


def scheduled_runs(url: str) -> dict[str, dict[str, Any]]:
    return {g: aggregate_observability_metrics(g, database_url=url) for g in GRANULARITIES}


def waiting(url: str) -> dict[str, float]:
    """observability_stale_buckets per granularity, as Prometheus would scrape it."""
    registry = build_registry(url)
    return {
        s.labels["granularity"]: s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "observability_stale_buckets"
    }


def status_lines(url: str, capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    assert main(["status", "--database-url", url]) == 0
    out = capsys.readouterr().out
    section = out.split("late rows waiting for a scheduled run")[1].split("\n\n")[0]
    return [line.split() for line in section.splitlines()[2:]]


def compare(
    url: str,
    oracle: Oracle,
    traffic: Any,
    windows: dict[str, tuple[datetime, datetime]],
    exact: bool,
) -> list[Diff]:
    """The oracle's checks (rows, the rollup views, local days), with metrics_aggregates
    compared over the windows only: its rows in open buckets were synced as they stood and are
    completed by the runs after those buckets close."""
    diffs = [
        d
        for d in check(url, oracle, traffic, len(traffic.phases), windows, exact, [])
        if d.view != "metrics_aggregates"
    ]

    def inside(granularity: str, at: datetime) -> bool:
        return windows[granularity][0] <= at < windows[granularity][1]

    cells = {k: c for k, c in metric_cells(oracle.expected()).items() if inside(k[0], k[1])}
    seen = observed.read(url, bucket(traffic.start, "week"), traffic.now + timedelta(days=2))
    rows = [r for r in seen.aggregates if inside(r["granularity"], r["bucket"])]
    return diffs + compare_metrics("metrics_aggregates", cells, rows, sketch_bound=exact)


def worst_count_error(diffs: list[Diff]) -> float:
    """The largest relative difference of a metrics_aggregates count from the oracle's."""
    worst = 0.0
    for d in diffs:
        if d.view == "metrics_aggregates" and d.field == "count" and d.expected:
            worst = max(worst, abs(d.observed - d.expected) / d.expected)
    return worst


def kinds(diffs: list[Diff]) -> dict[str, int]:
    """Differences of metrics_aggregates: missing rows, duplicated rows, wrong values."""
    mine = [d for d in diffs if d.view == "metrics_aggregates"]
    return {
        "missing": sum(d.observed == "missing" for d in mine),
        "duplicated": sum(d.observed == "a duplicate row" for d in mine),
        "wrong": sum(d.observed not in ("missing", "a duplicate row") for d in mine),
    }


LATE_USER = "7d8e7a3c-0000-4000-8000-0000000000aa"


def yesterdays_trace(now: datetime) -> Step:
    """A trace with an LLM call, yesterday at 10:20 UTC, sent over OTLP after the first sync:
    late for hours and a day already synced (the generator's late rows fall where its seed and
    the clock put them)."""
    start = datetime_to_ns(bucket_floor(now, "day") - timedelta(days=1) + timedelta(hours=10))
    second = 1_000_000_000
    trace_id, root_id, call_id = "5eed" * 8, "5eed" * 4, "cafe" * 4
    root = OtlpSpan(
        trace_id, root_id, None, "answer", start, start + 3 * second,
        {"gen_ai.operation.name": "chat", "user.id": LATE_USER}, status="ok",
    )  # fmt: skip
    call = OtlpSpan(
        trace_id, call_id, root_id, "chat gpt-4o", start + second, start + 2 * second,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
        },
        status="ok",
    )  # fmt: skip
    return Step((OtlpExport(SDK, (call, root)),), "late: yesterday")


def test_oracle_late_traffic_reaches_metrics_aggregates_with_one_scheduled_run(
    otlp_endpoint: str, late_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = late_db
    now = datetime.now(UTC)
    assert observed.reset(url, now) == []
    traffic = generate(SEED, now, TRACES, DOCUMENTS)
    oracle = Oracle(traffic, read_prices(observed.prices(url)))
    exact = observed.sketch_implementation(url) == "observability"
    sender = Sender(url, otlp_endpoint)
    problems: list[Diff] = []
    try:
        phase_1, phase_2 = traffic.phases
        for step in phase_1:
            outcomes = sender.send(step)
            for export in step.exports:
                oracle.apply(export)
            problems += _deliveries(oracle, outcomes, 1)
        sync(url, traffic)  # metrics_aggregates right after phase 1, as the oracle test does
        with connect(url) as conn:
            conn.execute("truncate observability.stale_buckets")  # phase 1 is synced
        observed.compress(url)
        for step in (*phase_2, yesterdays_trace(now)):
            outcomes = sender.send(step)
            for export in step.exports:
                oracle.apply(export)
            problems += _deliveries(oracle, outcomes, 2)
    finally:
        sender.close()
    assert problems == []

    # Compared: every complete bucket from the first of the traffic (open buckets are synced
    # by the runs after they close).
    compared_at = datetime.now(UTC)
    windows = {g: (bucket(traffic.start, g), bucket_floor(compared_at, g)) for g in GRANULARITIES}
    with connect(url) as conn:
        late = conn.execute(
            "select s.bucket, s.bucket < %s,"
            " exists (select from timescaledb_information.chunks as c"
            "  where c.hypertable_schema = 'observability' and c.is_compressed"
            "  and c.range_start <= s.bucket and s.bucket < c.range_end)"
            " from observability.stale_buckets as s where s.granularity = 'hour'",
            [compared_at - OLDEST_POLICY_WINDOW],
        ).fetchall()
    # phase 2 wrote into yesterday, into compressed chunks and older than every refresh
    # policy's window
    yesterday = bucket_floor(compared_at, "day") - timedelta(days=1)
    assert any(bucket_floor(hour, "day") == yesterday for hour, _, _ in late)
    assert any(compressed for _, _, compressed in late)
    assert any(old for _, old, _ in late)
    before = waiting(url)
    assert all(before[g] > 0 for g in GRANULARITIES), before

    stale = compare(url, oracle, traffic, windows, exact)
    stale_kinds = kinds(stale)
    assert stale_kinds["wrong"] + stale_kinds["missing"] > 0, "phase 2 changed nothing synced"

    worst = worst_count_error(stale)
    runs = scheduled_runs(url)
    assert all(r["late_buckets"] > 0 for r in runs.values()), runs
    diffs = compare(url, oracle, traffic, windows, exact)
    with capsys.disabled():
        print(
            f"\nlate data, seed {SEED}: before the scheduled runs {stale_kinds} "
            f"({len(stale)} differences in all; worst count off by {worst:.0%}), notes waiting "
            f"{before}; after one run of each "
            f"granularity {kinds(diffs)}; late buckets synced "
            f"{ {g: r['late_buckets'] for g, r in runs.items()} }"
        )
    assert diffs == [], report(SEED, diffs)
    assert kinds(diffs) == {"missing": 0, "duplicated": 0, "wrong": 0}
    assert waiting(url) == {g: 0 for g in GRANULARITIES}


# --- plain SQL, the writer's deletes, and what the gauge and status say ----------------------

TRUTH = """
select public.time_bucket(%(width)s, started_at) as bucket, count(duration_ms),
  sum(duration_ms)::float8
from observability.traces
where started_at >= %(start)s and started_at < %(end)s
group by 1 order by 1
"""
SYNCED = """
select bucket_time, count, sum_value::float8 from observability.metrics_aggregates
where granularity = %(granularity)s and metric_type = 'trace.duration_ms'
  and dimension_type = 'overall' and bucket_time >= %(start)s and bucket_time < %(end)s
order by 1
"""
INSERT = """
insert into observability.traces (trace_id, started_at, name, operation_type, status, duration_ms)
select pg_catalog.md5(%(tag)s || i::text), %(at)s + i * interval '1 second', 'late', 'chat',
  'ok', 100 + i
from pg_catalog.generate_series(1, %(n)s) as i
"""


def truth_and_synced(
    conn: psycopg.Connection[Any], granularity: str, start: datetime, end: datetime
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    window = {"width": WIDTHS[granularity], "start": start, "end": end}
    truth = conn.execute(TRUTH, window).fetchall()
    synced = conn.execute(SYNCED, {**window, "granularity": granularity}).fetchall()
    return truth, synced


def trace(trace_id: str, at: datetime, duration: int) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "started_at": at,
        "ended_at": at + timedelta(milliseconds=duration),
        "duration_ms": duration,
        "name": "base",
        "operation_type": "chat",
        "status": "ok",
    }


def test_plain_sql_late_rows_yesterday_compressed_and_beyond_every_window(
    late_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = late_db
    now = datetime.now(UTC)
    today = bucket_floor(now, "day")
    yesterday = today - timedelta(days=1) + timedelta(hours=10)
    compressed = today - timedelta(days=8) + timedelta(hours=10)
    ancient = today - timedelta(days=24) + timedelta(hours=10)  # older than every window
    start = bucket_floor(ancient, "week")
    with connect(url) as conn:
        result = write_batch(
            conn,
            traces=[
                trace(f"{10 * i + k + 1:032x}", at + timedelta(minutes=i), 50 + i)
                for i in range(3)
                for k, at in enumerate((yesterday, compressed, ancient))
            ],
        )
        assert not result.rejected and result.written["trace"] == 9
    for granularity in GRANULARITIES:
        backfill_metrics(start, now, granularity, database_url=url, now=now)
    with connect(url) as conn:
        conn.execute("truncate observability.stale_buckets")  # the backfill synced them
        observed.compress(url)  # (the embedded engine's job runner may have done it already)
        in_compressed = conn.execute(
            "select count(*) from timescaledb_information.chunks where is_compressed"
            " and hypertable_name = 'traces' and range_start <= %s and %s < range_end",
            [compressed, compressed],
        ).fetchone()
        assert in_compressed == (1,)
        for tag, at, n in (("y", yesterday, 5), ("c", compressed, 7), ("a", ancient, 4)):
            conn.execute(INSERT, {"tag": tag, "at": at, "n": n})
        # an update of a row in the compressed chunk (trace 2: i = 0, k = 1)
        conn.execute(
            "update observability.traces set duration_ms = 5000 where trace_id = %s",
            [f"{2:032x}"],
        )
        for granularity in GRANULARITIES:
            truth, synced = truth_and_synced(
                conn, granularity, start, bucket_floor(now, granularity)
            )
            assert truth != synced, f"{granularity}: the late rows changed nothing synced"

    before = waiting(url)
    this_week = bucket_floor(now, "week")
    weeks = {bucket_floor(at, "week") for at in (yesterday, compressed, ancient)} - {this_week}
    assert before == {"hour": 3, "day": 3, "week": len(weeks)}
    shown = status_lines(url, capsys)
    assert [(row[0], row[1]) for row in shown] == [(g, str(int(before[g]))) for g in GRANULARITIES]

    scheduled_runs(url)

    with connect(url) as conn:
        for granularity in GRANULARITIES:
            truth, synced = truth_and_synced(
                conn, granularity, start, bucket_floor(now, granularity)
            )
            assert synced == truth, granularity
    assert waiting(url) == {g: 0 for g in GRANULARITIES}
    assert [(row[0], row[1]) for row in status_lines(url, capsys)] == [
        (g, "0") for g in GRANULARITIES
    ]


def test_rows_in_the_open_hour_note_nothing(late_db: str) -> None:
    with connect(late_db) as conn:
        conn.execute(INSERT, {"tag": "o", "at": datetime.now(UTC).replace(second=0), "n": 1})
        assert conn.execute("select count(*) from observability.stale_buckets").fetchone() == (0,)


def test_a_span_moved_by_the_writer_notes_the_bucket_it_left(late_db: str) -> None:
    now = datetime.now(UTC)
    old = bucket_floor(now, "day") - timedelta(days=2, hours=-9)
    span = {
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "started_at": old,
        "ended_at": old + timedelta(seconds=1),
        "duration_ms": 1000,
        "name": "chat",
        "span_type": "llm",
        "model": "gpt-4o",
        "provider": "openai",
    }
    with connect(late_db) as conn:
        assert not write_batch(conn, spans=[span]).rejected
        conn.execute("truncate observability.stale_buckets")
        moved = {**span, "started_at": now, "ended_at": now + timedelta(seconds=1)}
        result = write_batch(conn, spans=[moved])
        assert not result.rejected and result.written["span"] == 1
        noted = conn.execute(
            "select granularity, bucket from observability.stale_buckets order by 1, 2"
        ).fetchall()
    assert ("hour", bucket_floor(old, "hour")) in noted
    assert ("day", bucket_floor(old, "day")) in noted


def test_a_note_written_while_a_run_works_stays_for_the_next_run(late_db: str) -> None:
    from worker.rollups.stale import sync_noted

    now = datetime.now(UTC)
    first = bucket_floor(now, "day") - timedelta(days=3, hours=-5)
    with connect(late_db) as conn:
        conn.execute(INSERT, {"tag": "n1", "at": first, "n": 2})
        read = conn.execute("select count(*) from observability.stale_buckets").fetchone()
        assert read is not None and read[0] > 0
        refreshed = []

        def refresh(window: Any) -> None:
            refreshed.append(window)
            # a late write that commits after the run read its notes
            with connect(late_db) as other:
                other.execute(INSERT, {"tag": "n2", "at": first + timedelta(days=1), "n": 1})

        done = sync_noted(conn, "hour", now, refresh=refresh, renew=lambda: None)
        assert done.buckets == 1 and len(refreshed) == 1
        left = conn.execute(
            "select granularity, bucket from observability.stale_buckets order by 1, 2"
        ).fetchall()
    # the first write's hour note is gone; the second write's notes (and the first's day and
    # week notes, for other granularities) are left
    assert ("hour", bucket_floor(first, "hour")) not in left
    assert ("hour", bucket_floor(first + timedelta(days=1), "hour")) in left
    assert ("day", bucket_floor(first, "day")) in left


def test_the_beat_hour_task_on_a_real_worker_syncs_late_rows_and_the_gauge_drops(
    tmp_path: Path, celery_broker: str, late_db: str
) -> None:
    from worker.scheduling.app import BEAT_SCHEDULE, app

    url = late_db
    now = datetime.now(UTC)
    at = bucket_floor(now, "day") - timedelta(days=4) + timedelta(hours=7)
    start, end = bucket_floor(at, "hour"), bucket_floor(at, "hour") + WIDTHS["hour"]
    with connect(url) as conn:
        conn.execute(INSERT, {"tag": "b1", "at": at, "n": 3})
        backfill_metrics(start, end, "hour", database_url=url, now=now)
        conn.execute("truncate observability.stale_buckets")
        conn.execute(INSERT, {"tag": "b2", "at": at, "n": 2})  # late, into a synced hour
        truth, synced = truth_and_synced(conn, "hour", start, end)
        assert [row[1] for row in truth] == [5] and [row[1] for row in synced] == [3]
    worker = start_worker(tmp_path, url)
    try:
        assert sample(worker.scrape(), "observability_stale_buckets", granularity="hour") == 1
        entry = BEAT_SCHEDULE["aggregate-hourly-metrics"]
        summary = app.send_task(entry["task"], args=entry["args"]).get(timeout=120)
        assert summary["late_buckets"] == 1
        assert sample(worker.scrape(), "observability_stale_buckets", granularity="hour") == 0
        assert sample(worker.scrape(), "observability_stale_buckets", granularity="day") == 1
    finally:
        worker.stop()
    with connect(url) as conn:
        truth, synced = truth_and_synced(conn, "hour", start, end)
    assert synced == truth


def test_copy_into_a_hypertable_notes_late_rows(late_db: str) -> None:
    at = bucket_floor(datetime.now(UTC), "day") - timedelta(days=2) + timedelta(hours=3)
    with connect(late_db) as conn, conn.cursor() as cur:
        with cur.copy(
            "copy observability.document_events (id, document_id, created_at, event_type, status)"
            " from stdin"
        ) as copy:
            copy.write_row(
                (
                    "7d8e7a3c-0000-4000-8000-000000000001",
                    "7d8e7a3c-0000-4000-8000-000000000002",
                    at,
                    "index",
                    "ok",
                )
            )
        noted = cur.execute(
            "select granularity, bucket from observability.stale_buckets order by 1, 2"
        ).fetchall()
    assert ("hour", bucket_floor(at, "hour")) in noted
    assert ("day", bucket_floor(at, "day")) in noted


def test_recost_reaches_metrics_aggregates_with_the_next_scheduled_runs(late_db: str) -> None:
    from worker.rollups.recost import recost

    model, provider = "late-recost-model", "late-recost"
    day = bucket_floor(datetime.now(UTC), "day") - timedelta(days=4)
    prices = (
        "insert into observability.model_prices (model, provider, effective_from,"
        " input_usd_per_million, output_usd_per_million) values (%s, %s, %s, %s, %s)"
    )
    spans = [
        {
            "trace_id": f"{0x1A7E + n:032x}",
            "span_id": f"{0x1A7E + n:016x}",
            "started_at": day + timedelta(hours=10, minutes=15 * n),
            "name": "chat",
            "span_type": "llm",
            "provider": provider,
            "model": model,
            "input_tokens": 1000,
            "output_tokens": 500,
        }
        for n in range(2)
    ]
    synced = (
        "select granularity, sum_value from observability.metrics_aggregates"
        " where metric_type = 'llm.cost_usd' and dimension_type = 'model'"
        " and dimension_value = %s and granularity in ('hour', 'day') order by 1"
    )
    with connect(late_db) as conn:
        try:
            conn.execute(prices, [model, provider, day - timedelta(days=30), 1, 2])
            assert not write_batch(conn, spans=spans).rejected
            for granularity in ("hour", "day"):
                backfill_metrics(day, day + timedelta(days=1), granularity, database_url=late_db)
            assert conn.execute(synced, [model]).fetchall() == [("day", 0.004), ("hour", 0.004)]
            conn.execute("truncate observability.stale_buckets")
            conn.execute(prices, [model, provider, day + timedelta(hours=9), 3, 4])
            assert recost(conn, day, day + timedelta(days=1)).changed == 2
            scheduled_runs(late_db)
            assert conn.execute(synced, [model]).fetchall() == [("day", 0.01), ("hour", 0.01)]
        finally:
            conn.execute("delete from observability.model_prices where model = %s", [model])


def test_the_run_records_what_its_late_buckets_changed(late_db: str) -> None:
    at = bucket_floor(datetime.now(UTC), "day") - timedelta(days=2) + timedelta(hours=4)
    with connect(late_db) as conn:
        conn.execute(INSERT, {"tag": "r", "at": at, "n": 2})
        summary = aggregate_observability_metrics("hour", database_url=late_db)
        recorded = conn.execute(
            "select metrics_created, metrics_updated, metrics_deleted"
            " from observability.aggregation_runs where id = %s",
            [summary["run_id"]],
        ).fetchone()
    assert summary["late_buckets"] == 1 and summary["metrics_created"] > 0
    created = (summary["metrics_created"], summary["metrics_updated"], summary["metrics_deleted"])
    assert recorded == created
