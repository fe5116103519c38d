from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.cleanup import refresh_closed, remove_bench_rows
from bench.common import (
    Goal,
    GroupResult,
    Options,
    describe_url,
    fmt_seconds,
    median,
    progress,
    render_table,
    server_info,
    timed,
)
from bench.rollups_workload import (
    FULL_TRACES,
    HISTORY,
    SPANS_PER_TRACE,
    Slice,
    generate,
    rollup_definitions,
    without_sketches,
)
from worker.embedded.engine import EmbeddedEngine
from worker.monitoring.health import rollup_statuses
from worker.schema.install import install
from worker.schema.sqltemplate import recorded_sketch, sketch_merge_language

Connection = psycopg.Connection[Any]
SOURCES = ("traces", "llm_spans")
LEVELS = ("hourly", "daily", "weekly")
PLAIN_SCHEMA = "bench_rollups"

DASHBOARD_VIEW = """
select bucket, dimension_value, p50, p95, p99 from observability.metrics
where granularity = 'day' and metric_type = 'llm.duration_ms' and dimension_type = 'model'
  and bucket >= %(start)s and bucket < %(end)s
"""
DASHBOARD_RAW = """
select public.time_bucket(interval '1 day', s.started_at), s.model,
  pg_catalog.percentile_cont(array[0.5, 0.95, 0.99]) within group (order by s.duration_ms)
from observability.spans as s
where s.span_type = 'llm' and s.model is not null
  and s.started_at >= %(start)s and s.started_at < %(end)s
group by 1, 2
"""

_settings = {"scale": 1.0}


def configure(scale: float) -> None:
    """Workload size as a fraction of the full one (500k traces, 2M LLM spans, 30 days)."""
    _settings["scale"] = scale


@dataclass(frozen=True)
class Comparison:
    name: str
    measured_s: float
    baseline_s: float
    goal: str  # e.g. ">= 100x" (baseline / measured) or "<= 5%" (measured / baseline)

    @property
    def ratio(self) -> float:
        if self.goal.startswith(">="):
            return self.baseline_s / self.measured_s
        return self.measured_s / self.baseline_s

    def as_goal(self) -> Goal:
        op, bound = self.goal.split()
        unit = bound[-1] if bound[-1] in "x%" else ""
        scale = 100 if unit == "%" else 1
        return Goal(
            self.name,
            self.ratio * scale,
            op,
            float(bound.rstrip("x%")),
            unit,
            f"{fmt_seconds(self.measured_s)} s vs {fmt_seconds(self.baseline_s)} s",
        )

    @property
    def met(self) -> bool:
        return self.as_goal().met


@contextmanager
def database(opts: Options) -> Iterator[tuple[str, dict[str, Any]]]:
    if opts.database_url is not None:
        yield opts.database_url, {"kind": "database_url", **describe_url(opts.database_url)}
        return
    # On disk, not in memory: 2.5M rows would not fit the engine's WASM heap.
    with (
        tempfile.TemporaryDirectory(prefix="bench-rollups-") as tmp,
        EmbeddedEngine(data_dir=Path(tmp) / "data") as engine,
    ):
        yield engine.url, {"kind": "embedded", "storage": "disk"}


def refresh(conn: Connection, rollup: str, level: str) -> float:
    seconds, _ = timed(lambda: refresh_closed(conn, rollup, level))
    return seconds


def repeat(times: int, fn: Callable[[], Any]) -> float:
    samples = [timed(fn)[0] for _ in range(times)]
    value = median(samples)
    assert value is not None
    return value


def into_temp_table(conn: Connection, query: str) -> Callable[[], None]:
    def run() -> None:
        conn.execute(f"create temp table bench_rollups_out as {query}")
        conn.execute("drop table bench_rollups_out")

    return run


def row_counts(conn: Connection) -> list[dict[str, Any]]:
    counts = []
    for source in (*SOURCES, "document_events"):
        for level in LEVELS:
            for dimension, rows in conn.execute(
                f"select dimension_type, pg_catalog.count(*) from observability.{source}_{level}"
                " group by 1 order by 1"
            ).fetchall():
                counts.append({"rollup": f"{source}_{level}", "dimension": dimension, "rows": rows})
    return counts


def weekly_from_raw(hourly_query: str, sketch_schema: str) -> str:
    """The hourly rollup's query with weekly buckets, plus the percentiles the weekly rollup
    stores: the same rows the weekly rollup holds, computed from raw rows."""
    weekly = hourly_query.replace("interval '1 hour'", "interval '1 week'")
    percentiles = [
        f"{sketch_schema}.approx_percentile_array(array[0.5, 0.95, 0.99], w.{name}_sketch)"
        f" as {name}_percentiles"
        for name in re.findall(r"as (\w+)_sketch\b", hourly_query)
    ]
    return f"select w.*, {', '.join(percentiles)} from ({weekly}) as w"


def dashboard_accuracy(conn: Connection, window: dict[str, datetime]) -> float:
    """Largest relative error of the view's percentiles against percentile_cont."""
    view = {(b, m): (p50, p95, p99) for b, m, p50, p95, p99 in conn.execute(DASHBOARD_VIEW, window)}
    worst = 0.0
    for bucket, model, exact in conn.execute(DASHBOARD_RAW, window).fetchall():
        if (bucket, model) in view:
            for approx, value in zip(view[(bucket, model)], exact, strict=True):
                worst = max(worst, abs(approx - value) / abs(value))
    return worst


def measure(conn: Connection, opts: Options, scale: float) -> dict[str, Any]:
    traces = max(720, round(FULL_TRACES * scale))
    now = conn.execute("select pg_catalog.date_trunc('hour', pg_catalog.now())").fetchone()[0]  # type: ignore[index]
    history_end = now - timedelta(hours=1)
    history = Slice(1, traces, history_end - HISTORY, HISTORY)
    new_hour = Slice(traces + 1, traces + max(1, traces // 720), history_end, timedelta(hours=1))
    result: dict[str, Any] = {"traces": traces, "spans": traces * SPANS_PER_TRACE}

    progress(f"rollups: generating {traces:,} traces and {traces * SPANS_PER_TRACE:,} spans")
    result["load_s"], _ = timed(lambda: generate(conn, history))

    schema = recorded_sketch(conn)
    assert schema is not None
    result["sketch"] = schema[0]
    result["sketch_merge_language"] = sketch_merge_language(conn)
    definitions = rollup_definitions(schema[1])
    conn.execute(f"create schema if not exists {PLAIN_SCHEMA}")
    plain: dict[str, float] = {}
    for source in SOURCES:
        options, query = definitions[f"observability.{source}_hourly"]
        name = f"{PLAIN_SCHEMA}.{source}_hourly"
        conn.execute(
            f"create materialized view {name} with ({options}) as {without_sketches(query)}"
            " with no data"
        )
        progress(f"rollups: refreshing {name} (no percentiles)")
        plain[source] = refresh(conn, name, "hourly")

    full: dict[str, float] = {}
    for level in LEVELS:
        for source in SOURCES:
            progress(f"rollups: refreshing observability.{source}_{level}")
            full[f"{source}_{level}"] = refresh(conn, f"observability.{source}_{level}", level)
    result["full_refresh_s"] = full
    result["plain_refresh_s"] = plain
    result["row_counts"] = row_counts(conn)

    # The open day is real-time: every query over daily views merges its hours, so the day and
    # weekly measures grow with the hour the run starts (docs/development.md).
    end_utc = history_end.astimezone(UTC)
    result["open_day_hours"] = (end_utc - end_utc.replace(hour=0)) // timedelta(hours=1)
    window = {"start": history.start + timedelta(days=1), "end": history_end}
    window["start"] = window["start"].replace(hour=0)
    progress("rollups: dashboard query, views against raw rows")
    views_s = repeat(opts.repeat, lambda: conn.execute(DASHBOARD_VIEW, window).fetchall())
    raw_s = repeat(opts.repeat, lambda: conn.execute(DASHBOARD_RAW, window).fetchall())
    result["dashboard_rows"] = len(conn.execute(DASHBOARD_VIEW, window).fetchall())
    result["dashboard_max_relative_error"] = dashboard_accuracy(conn, window)

    progress("rollups: weekly rollups from the daily ones against weekly from raw rows")
    weekly_daily = 0.0
    weekly_raw = 0.0
    for source in SOURCES:
        _, daily_query = definitions[f"observability.{source}_weekly"]
        _, hourly_query = definitions[f"observability.{source}_hourly"]
        weekly_daily += repeat(opts.repeat, into_temp_table(conn, daily_query))
        weekly_raw += timed(into_temp_table(conn, weekly_from_raw(hourly_query, schema[1])))[0]

    progress("rollups: one new hour, then the refresh policies")
    result["new_hour_load_s"], _ = timed(lambda: generate(conn, new_hour))
    jobs = dict(
        conn.execute(
            "select hypertable_name, job_id from timescaledb_information.jobs"
            " where proc_name = 'policy_refresh_continuous_aggregate'"
            " and hypertable_schema = 'observability'"
        ).fetchall()
    )
    incremental: dict[str, float] = {}
    for level in LEVELS:
        for source in SOURCES:
            job = jobs[f"{source}_{level}"]
            incremental[f"{source}_{level}"] = timed(
                lambda job=job: conn.execute("call public.run_job(%s)", [job])
            )[0]
    result["incremental_refresh_s"] = incremental
    # The policies did materialize the new hour: the hourly watermarks moved past it.
    now = conn.execute("select pg_catalog.now()").fetchone()[0]  # type: ignore[index]
    watermarks = {r.name: r.watermark for r in rollup_statuses(conn, now)}
    result["new_hour_materialized"] = all(
        watermarks[f"observability.{source}_hourly"] == history_end + timedelta(hours=1)
        for source in SOURCES
    )

    result["comparisons"] = [
        Comparison("dashboard p50/p95/p99 per model per day, 30 days", views_s, raw_s, ">= 100x"),
        Comparison(
            "refresh after one new hour vs full recompute",
            sum(incremental.values()),
            sum(full.values()),
            "<= 5%",
        ),
        Comparison(
            "weekly from daily rollups vs from raw rows", weekly_daily, weekly_raw, ">= 50x"
        ),
        Comparison(
            "hourly refresh with sketches vs without percentiles",
            sum(full[f"{s}_hourly"] for s in SOURCES),
            sum(plain.values()),
            "<= 3x",
        ),
    ]
    return result


def pause_jobs(conn: Connection, scheduled: bool) -> None:
    conn.execute(
        "select public.alter_job(j.job_id, scheduled => %s) from timescaledb_information.jobs as j"
        " where j.hypertable_schema = 'observability'",
        [scheduled],
    )


def report(result: dict[str, Any], scale: float, target: str) -> str:
    comparisons: list[Comparison] = result["comparisons"]
    title = (
        f"rollups on {target}: {result['traces']:,} traces, {result['spans']:,} LLM spans over "
        f"30 days (scale {scale:g}), sketch: {result['sketch']} (the project's sketch merges in "
        f"{result['sketch_merge_language']})"
    )
    rows = []
    for c in comparisons:
        ratio = f"{c.ratio * 100:.2f}%" if c.goal.endswith("%") else f"{c.ratio:.1f}x"
        met = "yes" if c.met else "NO"
        rows.append(
            [c.name, fmt_seconds(c.measured_s), fmt_seconds(c.baseline_s), ratio, c.goal, met]
        )
    sections = [
        render_table(title, ["measure", "s", "baseline s", "ratio", "goal", "met"], rows, "lrrrll")
    ]
    refresh_rows = [
        [
            name,
            fmt_seconds(result["full_refresh_s"][name]),
            fmt_seconds(result["incremental_refresh_s"][name]),
            fmt_seconds(result["plain_refresh_s"].get(name.removesuffix("_hourly")))
            if name.endswith("_hourly")
            else "-",
        ]
        for name in result["full_refresh_s"]
    ]
    sections.append(
        render_table(
            "refresh times",
            ["rollup", "full s", "after 1 new hour s", "hourly without percentiles s"],
            refresh_rows,
            "lrrr",
        )
    )
    sections.append(
        render_table(
            "materialized rows",
            ["rollup", "dimension", "rows"],
            [[r["rollup"], r["dimension"], f"{r['rows']:,}"] for r in result["row_counts"]],
            "llr",
        )
    )
    sections.append(
        f"new hour materialized by the policies: {result['new_hour_materialized']}; "
        f"load {fmt_seconds(result['load_s'])} s; dashboard rows {result['dashboard_rows']}, "
        f"largest relative error of p50/p95/p99 against percentile_cont "
        f"{result['dashboard_max_relative_error'] * 100:.2f}%; weekly-from-raw ran once, the "
        f"other measures are medians of the runs; the open day held "
        f"{result['open_day_hours']} hours of rows, merged from the hourly rollups by every query "
        f"over daily ones"
    )
    return "\n\n".join(sections)


def run(opts: Options) -> GroupResult:
    scale = _settings["scale"]
    started = time.perf_counter()
    with (
        database(opts) as (url, target_info),
        psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn,
    ):
        found = conn.execute(
            "select pg_catalog.to_regclass('observability.traces') is not null"
        ).fetchone()
        if found and found[0]:
            rows = conn.execute("select exists (select from observability.traces)").fetchone()
            if rows and rows[0]:
                raise SystemExit("rollups benchmark: observability.traces is not empty")
        install(conn)
        server = server_info(conn)
        pause_jobs(conn, scheduled=False)
        try:
            result = measure(conn, opts, scale)
        finally:
            conn.execute(f"drop schema if exists {PLAIN_SCHEMA} cascade")
            if opts.database_url is not None:
                progress("rollups: removing the benchmark's rows")
                remove_bench_rows(conn)
            pause_jobs(conn, scheduled=True)
    target = "embedded engine (on disk)" if target_info["kind"] == "embedded" else url
    comparisons: list[Comparison] = result["comparisons"]
    payload = {
        "options": {"scale": scale, "repeat": opts.repeat},
        "target": {**target_info, **server},
        "duration_s": round(time.perf_counter() - started, 1),
        **{k: v for k, v in result.items() if k != "comparisons"},
        "comparisons": [{**asdict(c), "ratio": c.ratio, "met": c.met} for c in comparisons],
    }
    goals = tuple(c.as_goal() for c in comparisons)
    return GroupResult(payload, report(result, scale, target), ok=True, goals=goals)
