from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from bench.cleanup import remove_bench_rows
from bench.common import (
    Goal,
    GroupResult,
    Options,
    describe_url,
    fmt_rate,
    fmt_ratio,
    fmt_seconds,
    median,
    progress,
    render_table,
    server_info,
    watchdog,
)
from bench.ingest_workload import INSERT_SELECT_SQL, insert_select_params, make_genai_spans
from worker.embedded.engine import EmbeddedEngine
from worker.ingest import write_batch
from worker.ingest.items import SPAN
from worker.ingest.pricing import price_spans
from worker.ingest.validation import DEFAULT_LIMITS
from worker.ingest.writer import upsert_statements
from worker.schema.install import install

Connection = psycopg.Connection[Any]
BATCH = 1000
GOAL = 0.5
# Spans per run: the rows of --rows, in whole batches, at most this many (the engine keeps an
# in-memory database in its WASM heap).
MAX_SPANS = 100_000


@dataclass
class Measure:
    key: str
    label: str
    spans: int
    samples_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    spans_per_s: float | None = None
    ratio: float | None = None


def insert_select(conn: Connection, spans: Sequence[dict[str, Any]]) -> int:
    conn.execute(INSERT_SELECT_SQL, insert_select_params(len(spans)))
    return len(spans)


def bulk_writer(conn: Connection, spans: Sequence[dict[str, Any]]) -> int:
    written = 0
    for start in range(0, len(spans), BATCH):
        result = write_batch(conn, spans=spans[start : start + BATCH])
        if result.rejected:
            raise RuntimeError(f"the workload has rejects: {result.rejected[:3]}")
        written += result.written["span"]
    return written


@cache
def _multirow_stage_sql(rows: int) -> sql.Composed:
    statements = upsert_statements(SPAN)
    one = sql.SQL("({})").format(sql.SQL(", ").join([sql.Placeholder()] * len(SPAN.columns)))
    return sql.SQL("insert into pg_temp.{} ({}) values {}").format(
        statements.stage,
        sql.SQL(", ").join(map(sql.Identifier, SPAN.column_names)),
        sql.SQL(", ").join([one] * rows),
    )


def multirow_writer(conn: Connection, spans: Sequence[dict[str, Any]]) -> int:
    """The bulk writer with a multi-row INSERT instead of COPY into the staging table."""
    statements = upsert_statements(SPAN)
    written = 0
    for start in range(0, len(spans), BATCH):
        rows = [SPAN.validate(s, DEFAULT_LIMITS) for s in spans[start : start + BATCH]]
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(statements.create_stage)
            rows = price_spans(cur, rows)
            cur.execute(_multirow_stage_sql(len(rows)), [v for row in rows for v in row])
            cur.execute(statements.upsert)
            written += cur.rowcount
    return written


METHODS: tuple[tuple[str, str, Callable[[Connection, Sequence[dict[str, Any]]], int]], ...] = (
    ("insert_select", "in-engine INSERT ... SELECT (the limit)", insert_select),
    ("bulk_writer", f"write_batch, {BATCH:,} spans per batch (COPY)", bulk_writer),
    ("multirow", f"same, multi-row INSERT instead of COPY, {BATCH:,} per batch", multirow_writer),
)


def truncate(conn: Connection) -> None:
    # trace_extents too: left over, it would make every later run re-deliver known traces
    conn.execute("truncate observability.spans, observability.trace_extents")


@contextmanager
def database(opts: Options) -> Iterator[tuple[str, dict[str, Any]]]:
    if opts.database_url is not None:
        yield opts.database_url, {"kind": "database_url", **describe_url(opts.database_url)}
        return
    with EmbeddedEngine() as engine:
        yield engine.url, {"kind": "embedded", "storage": "memory"}


def measure(conn: Connection, opts: Options, n: int) -> tuple[list[Measure], dict[str, Any]]:
    progress(f"ingest: generating {n:,} GenAI spans")
    spans = make_genai_spans(n)
    measures = {key: Measure(key, label, n) for key, label, _ in METHODS}
    # The slow alternative only shows why COPY is used: a fifth of the spans tells its rate.
    measures["multirow"].spans = max(BATCH, n // 5 // BATCH * BATCH)
    # Warm-up: catalog caches, the staging table and the price lookup's plan.
    bulk_writer(conn, make_genai_spans(BATCH, seed=7))
    insert_select(conn, spans[:BATCH])
    truncate(conn)
    for run in range(1, opts.repeat + 1):
        # Interleaved, so that a slower moment of the machine hits every method alike.
        for key, label, load in METHODS:
            subset = spans[: measures[key].spans]
            with watchdog(conn, opts.timeout):
                began = time.perf_counter()
                written = load(conn, subset)
                seconds = time.perf_counter() - began
            if written != len(subset):
                raise RuntimeError(f"{label}: wrote {written:,} rows, expected {len(subset):,}")
            measures[key].samples_s.append(seconds)
            progress(f"  {label}: run {run}/{opts.repeat}: {seconds:.3f}s")
            truncate(conn)
    # Re-delivery of the same batches: every span is already stored and equal.
    bulk_writer(conn, spans)
    began = time.perf_counter()
    changed_again = sum(
        write_batch(conn, spans=spans[s : s + BATCH]).written["span"] for s in range(0, n, BATCH)
    )
    redelivery_s = time.perf_counter() - began
    costed = conn.execute("select count(cost_usd), count(*) from observability.spans").fetchone()
    truncate(conn)
    for m in measures.values():
        m.median_s = median(m.samples_s)
        if m.median_s:
            m.spans_per_s = m.spans / m.median_s
    base_rate = measures["insert_select"].spans_per_s
    for m in measures.values():
        if m.spans_per_s and base_rate:
            m.ratio = m.spans_per_s / base_rate
    extra = {
        "redelivery_s": redelivery_s,
        "redelivery_spans_per_s": n / redelivery_s,
        "redelivery_rows_changed": changed_again,
        "spans_with_cost": costed[0] if costed else None,
    }
    return list(measures.values()), extra


def report(
    measures: list[Measure], extra: dict[str, Any], n: int, opts: Options, target: str
) -> str:
    title = (
        f"ingest on {target}: GenAI LLM spans into observability.spans, "
        f"median of {opts.repeat} interleaved runs"
    )
    rows = [
        [
            m.label,
            f"{m.spans:,}",
            fmt_seconds(m.median_s),
            fmt_rate(m.spans_per_s),
            fmt_ratio(m.ratio),
        ]
        for m in measures
    ]
    headers = ["method", "spans", "median s", "spans/s", "vs limit"]
    table = render_table(title, headers, rows, "lrrrr")
    writer = next(m for m in measures if m.key == "bulk_writer")
    verdict = "met" if writer.ratio is not None and writer.ratio >= GOAL else "MISSED"
    notes = [
        f"goal: write_batch >= {GOAL:.2f} x in-engine INSERT ... SELECT: {verdict} "
        f"({fmt_ratio(writer.ratio)}; per run: "
        + ", ".join(
            f"{b / w:.2f}" for b, w in zip(measures[0].samples_s, writer.samples_s, strict=True)
        )
        + ")",
        "write_batch includes validation, pricing the spans without a cost (prices read once "
        "per batch), COPY into a staging table, the upsert and one commit per batch; INSERT ... "
        "SELECT generates the same columns and attribute keys inside the engine, with an inline "
        "cost, in one statement.",
        f"re-delivery of the same {n:,} spans: {fmt_rate(extra['redelivery_spans_per_s'])} "
        f"spans/s, {extra['redelivery_rows_changed']:,} rows changed; "
        f"{extra['spans_with_cost']:,} of {n:,} spans got a cost from the price table.",
    ]
    return table + "\n" + "\n".join(notes)


def run(opts: Options) -> GroupResult:
    started = time.perf_counter()
    n = max(BATCH, min(opts.rows, MAX_SPANS) // BATCH * BATCH)
    with (
        database(opts) as (url, target_info),
        psycopg.connect(url, autocommit=True, connect_timeout=30) as conn,
    ):
        install(conn)
        found = conn.execute("select exists (select from observability.spans)").fetchone()
        if found and found[0]:
            raise SystemExit("ingest benchmark: observability.spans is not empty")
        server = server_info(conn)
        pause_jobs(conn, scheduled=False)
        try:
            measures, extra = measure(conn, opts, n)
        finally:
            if opts.database_url is not None:
                remove_bench_rows(conn)
            pause_jobs(conn, scheduled=True)
    details = describe_url(url)
    target = (
        "a fresh in-memory embedded engine"
        if opts.database_url is None
        else f"{details.get('host', 'local socket')}:{details.get('port', 5432)}"
    )
    payload = {
        "options": {"spans": n, "batch": BATCH, "repeat": opts.repeat},
        "target": {**target_info, **server},
        "duration_s": round(time.perf_counter() - started, 3),
        "measures": [asdict(m) for m in measures],
        **extra,
        "goal": GOAL,
    }
    writer = next(m for m in measures if m.key == "bulk_writer")
    base = next(m for m in measures if m.key != "bulk_writer")
    goal = Goal(
        "write_batch spans/s vs in-engine INSERT ... SELECT",
        writer.ratio,
        ">=",
        GOAL,
        "",
        f"{fmt_rate(writer.spans_per_s)} vs {fmt_rate(base.spans_per_s)} spans/s",
    )
    return GroupResult(payload, report(measures, extra, n, opts, target), ok=True, goals=(goal,))


def pause_jobs(conn: Connection, scheduled: bool) -> None:
    conn.execute(
        "select public.alter_job(j.job_id, scheduled => %s) from timescaledb_information.jobs as j"
        " where j.hypertable_schema = 'observability'",
        [scheduled],
    )
