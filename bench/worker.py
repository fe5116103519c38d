from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg

from bench.cleanup import remove_bench_rows
from bench.common import (
    Goal,
    GroupResult,
    Options,
    fmt_rate,
    fmt_ratio,
    fmt_seconds,
    progress,
    render_table,
    server_info,
    timed,
)
from bench.rollups import database, pause_jobs
from bench.rollups_workload import FULL_TRACES, HISTORY, SPANS_PER_TRACE, Slice, generate
from worker.rollups import backfill_metrics
from worker.rollups.sync import sync_window
from worker.rollups.windows import Window, bucket_ceil
from worker.schema.install import install

Connection = psycopg.Connection[Any]
_settings = {"scale": 1.0}
RESYNC = timedelta(days=7)
RESYNC_GOAL = 2.0

# Whether the planner had statistics on the synced rows when the first backfill ran (autovacuum
# may have analysed them on a server; the embedded engine never does).
ANALYSED = """
select pg_catalog.count(*) from pg_catalog.pg_stats
where schemaname = '_timescaledb_internal' and tablename in (
  select chunk_name from timescaledb_information.chunks
  where hypertable_schema = 'observability' and hypertable_name = 'metrics_aggregates')
"""

# What the sync does, without the upsert: read the window's rows from the view and write them
# to a scratch table. The sync's own cost is what it adds on top of this.
COPY_ONLY = """
create temp table bench_worker_out as
select * from observability.metrics
where granularity = %(granularity)s and bucket >= %(start)s and bucket < %(end)s
"""


def configure(scale: float) -> None:
    _settings["scale"] = scale


def measure(conn: Connection, url: str, scale: float) -> dict[str, Any]:
    traces = max(720, round(FULL_TRACES * scale))
    row = conn.execute("select pg_catalog.date_trunc('hour', pg_catalog.now())").fetchone()
    assert row is not None
    end = row[0]
    start = end - HISTORY
    result: dict[str, Any] = {"traces": traces, "spans": traces * SPANS_PER_TRACE}
    progress(f"worker: generating {traces:,} traces and {traces * SPANS_PER_TRACE:,} spans")
    result["load_s"], _ = timed(lambda: generate(conn, Slice(1, traces, start, HISTORY)))

    backfills: dict[str, dict[str, Any]] = {}
    for granularity in ("hour", "day", "week"):
        progress(f"worker: 30-day {granularity} backfill (refresh and sync)")
        seconds, summary = timed(
            lambda granularity=granularity: backfill_metrics(
                # weeks wholly inside the 30 days: the one before reaches past retention
                bucket_ceil(start, "week") if granularity == "week" else start,
                end,
                granularity,
                database_url=url,
            )
        )
        backfills[granularity] = {"seconds": seconds, **summary}
    result["backfills"] = backfills

    # As after a demo or an import: rows bulk-loaded, rolled up and synced once (above), then
    # someone backfills a week again. Nothing changed, so it should cost what its repeat costs.
    analysed = conn.execute(ANALYSED).fetchone()
    result["resync_statistics_rows"] = analysed[0] if analysed else None
    for label in ("resync_first", "resync_repeat"):
        progress(f"worker: 7-day hourly backfill over synced rows ({label.split('_')[1]})")
        seconds, summary = timed(
            lambda: backfill_metrics(end - RESYNC, end, "hour", database_url=url)
        )
        result[f"{label}_s"] = seconds
        result[f"{label}_writes"] = (
            summary["metrics_created"] + summary["metrics_updated"] + summary["metrics_deleted"]
        )

    window = Window("hour", start, end)
    params = {"granularity": "hour", "start": start, "end": end}
    progress("worker: hourly sync of 30 days into an empty metrics_aggregates")
    conn.execute("delete from observability.metrics_aggregates where granularity = 'hour'")
    result["sync_insert_s"], counts = timed(lambda: sync_window(conn, window))
    result["sync_rows"] = counts.created
    progress("worker: the same sync again (nothing changed)")
    result["sync_unchanged_s"], again = timed(lambda: sync_window(conn, window))
    result["sync_unchanged_writes"] = again.created + again.updated + again.deleted
    progress("worker: reading the same rows into a scratch table")
    result["copy_only_s"], _ = timed(lambda: conn.execute(COPY_ONLY, params))
    conn.execute("drop table bench_worker_out")
    return result


def report(result: dict[str, Any], target: str) -> str:
    rows = result["sync_rows"]
    backfill_rows = [
        [
            g,
            str(b["buckets"]),
            f"{b['metrics_created']:,}",
            fmt_seconds(b["seconds"]),
            fmt_rate(b["metrics_created"] / b["seconds"] if b["seconds"] else None),
        ]
        for g, b in result["backfills"].items()
    ]
    sync_rows = [
        ["view rows into a scratch table (baseline)", fmt_seconds(result["copy_only_s"]),
         fmt_rate(rows / result["copy_only_s"]), "1.00"],
        ["sync into empty metrics_aggregates", fmt_seconds(result["sync_insert_s"]),
         fmt_rate(rows / result["sync_insert_s"]),
         fmt_ratio(result["copy_only_s"] / result["sync_insert_s"])],
        ["sync again, nothing changed", fmt_seconds(result["sync_unchanged_s"]),
         fmt_rate(rows / result["sync_unchanged_s"]),
         fmt_ratio(result["copy_only_s"] / result["sync_unchanged_s"])],
    ]  # fmt: skip
    return "\n\n".join(
        [
            f"worker benchmark on {target}: {result['traces']:,} traces and "
            f"{result['spans']:,} spans over 30 days, loaded in {fmt_seconds(result['load_s'])} s",
            render_table(
                "30-day backfills (refresh of the rollups, then sync), from nothing materialized",
                ["granularity", "buckets", "rows synced", "seconds", "rows/s"],
                backfill_rows,
                "lrrrr",
            ),
            render_table(
                f"hourly sync throughput, {rows:,} rows of 30 days (rollups already refreshed)",
                ["measure", "seconds", "rows/s", "ratio to baseline"],
                sync_rows,
                "lrrr",
            ),
            f"the unchanged re-sync wrote {result['sync_unchanged_writes']} rows",
            f"7-day hourly backfill right after the bulk load and its first sync: "
            f"{fmt_seconds(result['resync_first_s'])} s ({result['resync_first_writes']} rows "
            f"written; planner statistics on the synced rows: "
            f"{'yes' if result['resync_statistics_rows'] else 'none'}), repeated: "
            f"{fmt_seconds(result['resync_repeat_s'])} s",
        ]
    )


def run(opts: Options) -> GroupResult:
    started = time.perf_counter()
    with (
        database(opts) as (url, target_info),
        psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn,
    ):
        install(conn)
        found = conn.execute("select exists (select from observability.traces)").fetchone()
        if found and found[0]:
            raise SystemExit("worker benchmark: observability.traces is not empty")
        server = server_info(conn)
        pause_jobs(conn, scheduled=False)
        try:
            result = measure(conn, url, _settings["scale"])
        finally:
            if opts.database_url is not None:
                progress("worker: removing the benchmark's rows")
                remove_bench_rows(conn)
            pause_jobs(conn, scheduled=True)
    target = "embedded engine (on disk)" if target_info["kind"] == "embedded" else url
    payload = {
        "options": {"scale": _settings["scale"]},
        "target": {**target_info, **server},
        "duration_s": round(time.perf_counter() - started, 1),
        **result,
    }
    goal = Goal(
        "first backfill after a bulk load vs the same backfill repeated",
        result["resync_first_s"] / result["resync_repeat_s"],
        "<=",
        RESYNC_GOAL,
        "x",
        f"{fmt_seconds(result['resync_first_s'])} s vs {fmt_seconds(result['resync_repeat_s'])} s",
    )
    ok = result["sync_unchanged_writes"] == 0 and result["resync_repeat_writes"] == 0
    return GroupResult(payload, report(result, target), ok=ok, goals=(goal,))
