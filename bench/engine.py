from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.common import (
    Goal,
    GroupResult,
    Options,
    describe_url,
    fmt_rate,
    fmt_ratio,
    fmt_seconds,
    median,
    process_cpu_seconds,
    progress,
    render_table,
    server_info,
    timed,
    watchdog,
)
from worker.embedded.engine import EmbeddedEngine

INGEST_TABLE = "bench_engine_ingest"
WARM_TABLE = "bench_engine_warm"
COLUMNS = "ts, name, tokens, latency_ms, cost, attrs"
COPY_TYPES = ["timestamptz", "text", "int4", "float8", "numeric", "jsonb"]
MULTIROW_BATCH = 1000
COPY_GOAL = 0.5
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
READY_LINE = re.compile(r"engine ready in (\d+) ms")

Row = tuple[datetime, str, int, float, Decimal, Jsonb]
Connection = psycopg.Connection[Any]

# The same rows as make_rows(), generated inside the server (%% is a literal % for psycopg).
GENERATE_SQL = f"""
insert into {{table}} ({COLUMNS})
select timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second',
       'model-' || g %% 8 || '/op-' || g %% 13,
       g %% 4096,
       g::float8 / 1000,
       (g * 7919 %% 10000000) / 1000000.0,
       jsonb_build_object('ok', g %% 5 <> 0, 'retries', g %% 3)
from generate_series(1::bigint, %(n)s::bigint) as g
"""

FINGERPRINT_SQL = f"""
select count(*), sum(tokens), sum(cost), sum(length(name)), sum(length(attrs::text)),
       min(ts), max(ts), round(sum(latency_ms)::numeric, 3)
from {INGEST_TABLE}
"""
FINGERPRINT_KEYS = ("rows", "tokens", "cost", "name_chars", "attrs_chars", "min_ts", "max_ts")


def table_ddl(table: str) -> str:
    return f"""
    create table {table} (
        ts timestamptz not null,
        name text not null,
        tokens int not null,
        latency_ms float8 not null,
        cost numeric(10, 6) not null,
        attrs jsonb not null
    )"""


def make_rows(n: int) -> list[Row]:
    return [
        (
            EPOCH + timedelta(seconds=g),
            f"model-{g % 8}/op-{g % 13}",
            g % 4096,
            g / 1000,
            Decimal(g * 7919 % 10_000_000).scaleb(-6),
            Jsonb({"ok": g % 5 != 0, "retries": g % 3}),
        )
        for g in range(1, n + 1)
    ]


def expected_fingerprint(rows: Sequence[Row]) -> dict[str, Any]:
    # json.dumps spaces its output exactly as jsonb's text form does.
    return {
        "rows": len(rows),
        "tokens": sum(r[2] for r in rows),
        "cost": sum((r[4] for r in rows), Decimal(0)),
        "name_chars": sum(len(r[1]) for r in rows),
        "attrs_chars": sum(len(json.dumps(r[5].obj)) for r in rows),
        "min_ts": rows[0][0] if rows else None,
        "max_ts": rows[-1][0] if rows else None,
    }


def fingerprint(conn: Connection) -> dict[str, Any]:
    row = conn.execute(FINGERPRINT_SQL).fetchone()
    assert row is not None
    return dict(zip((*FINGERPRINT_KEYS, "latency"), row, strict=True))


# --- ingest paths -------------------------------------------------------------------------------


def load_generate(conn: Connection, rows: Sequence[Row]) -> None:
    conn.execute(GENERATE_SQL.format(table=INGEST_TABLE), {"n": len(rows)})


def load_executemany(conn: Connection, rows: Sequence[Row]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            f"insert into {INGEST_TABLE} ({COLUMNS}) values (%s, %s, %s, %s, %s, %s)", rows
        )


@cache
def multirow_sql(count: int) -> str:
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * count)
    return f"insert into {INGEST_TABLE} ({COLUMNS}) values {values}"


def load_multirow(conn: Connection, rows: Sequence[Row]) -> None:
    with conn.cursor() as cur:
        for start in range(0, len(rows), MULTIROW_BATCH):
            batch = rows[start : start + MULTIROW_BATCH]
            cur.execute(multirow_sql(len(batch)), [value for row in batch for value in row])


def load_copy_text(conn: Connection, rows: Sequence[Row]) -> None:
    with conn.cursor() as cur, cur.copy(f"copy {INGEST_TABLE} ({COLUMNS}) from stdin") as copy:
        for row in rows:
            copy.write_row(row)


def load_copy_binary(conn: Connection, rows: Sequence[Row]) -> None:
    sql = f"copy {INGEST_TABLE} ({COLUMNS}) from stdin (format binary)"
    with conn.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            copy.write_row(row)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    load: Callable[[Connection, Sequence[Row]], None]


BASELINE = Method("insert_select", "INSERT ... SELECT generate_series (server-side)", load_generate)
WIRE_METHODS = (
    Method("executemany", "executemany (pipeline)", load_executemany),
    Method("multirow_insert", f"multi-row INSERT, {MULTIROW_BATCH} rows/statement", load_multirow),
    Method("copy_text", "COPY FROM STDIN (text)", load_copy_text),
    Method("copy_binary", "COPY FROM STDIN (binary)", load_copy_binary),
)
# executemany goes last: if it wedges the engine, the other paths have already been measured.
RUN_ORDER = ("insert_select", "copy_text", "copy_binary", "multirow_insert", "executemany")


@dataclass
class IngestResult:
    method: str
    label: str
    samples_s: list[float] = field(default_factory=list)
    client_cpu_s: list[float] = field(default_factory=list)
    server_cpu_s: list[float] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    median_s: float | None = None
    rows_per_s: float | None = None
    ratio_to_insert_select: float | None = None


@contextmanager
def connect(url: str, timeout: float | None, **kwargs: Any) -> Iterator[Connection]:
    conn = psycopg.connect(url, connect_timeout=30, **kwargs)
    try:
        with watchdog(conn, timeout):
            yield conn
    finally:
        conn.close()


def reset_table(url: str, timeout: float | None) -> None:
    with connect(url, timeout, autocommit=True) as conn:
        conn.execute(f"drop table if exists {INGEST_TABLE}")
        conn.execute(table_ddl(INGEST_TABLE))


def check(found: dict[str, Any], expected: dict[str, Any]) -> str | None:
    wrong = [f"{k}={found[k]!r} (expected {v!r})" for k, v in expected.items() if found[k] != v]
    return "; ".join(wrong) or None


def measure_method(
    url: str,
    method: Method,
    rows: Sequence[Row],
    opts: Options,
    expected: dict[str, Any],
    server_pid: int | None,
) -> tuple[IngestResult, dict[str, Any] | None]:
    result = IngestResult(method.key, method.label)
    found: dict[str, Any] | None = None
    for run in range(1, opts.repeat + 1):
        reset_table(url, opts.timeout)
        conn = psycopg.connect(url, connect_timeout=30)
        try:
            with watchdog(conn, opts.timeout) as fired:
                server_cpu = process_cpu_seconds(server_pid)
                client_cpu = time.process_time()
                began = time.perf_counter()
                method.load(conn, rows)
                conn.commit()
                seconds = time.perf_counter() - began
                client_cpu = time.process_time() - client_cpu
                server_after = process_cpu_seconds(server_pid)
        except psycopg.Error as exc:
            if fired.is_set():
                result.status = f"TIMEOUT (no reply within {opts.timeout:.0f}s, run {run})"
            else:
                result.status = f"ERROR (run {run})"
            result.error = f"{type(exc).__name__}: {exc}".strip()
            progress(f"  {method.label}: run {run} failed: {result.status}; {result.error}")
            break
        finally:
            conn.close()
        with connect(url, opts.timeout, autocommit=True) as check_conn:
            found = fingerprint(check_conn)
        mismatch = check(found, expected)
        if mismatch:
            result.status = f"WRONG DATA (run {run})"
            result.error = mismatch
            progress(f"  {method.label}: run {run}: table content differs: {mismatch}")
            break
        result.samples_s.append(seconds)
        result.client_cpu_s.append(client_cpu)
        if server_cpu is not None and server_after is not None:
            result.server_cpu_s.append(server_after - server_cpu)
        progress(f"  {method.label}: run {run}/{opts.repeat}: {seconds:.3f}s")
    if result.status == "ok":
        result.median_s = median(result.samples_s)
        if result.median_s:
            result.rows_per_s = len(rows) / result.median_s
    return result, found


def run_ingest(url: str, opts: Options, server_pid: int | None = None) -> list[IngestResult]:
    progress(f"engine: generating {opts.rows:,} rows client-side")
    rows = make_rows(opts.rows)
    expected = expected_fingerprint(rows)
    with connect(url, opts.timeout, autocommit=True) as conn:
        # Warm-up so the first measured run doesn't pay for catalog caches.
        conn.execute(f"drop table if exists {INGEST_TABLE}")
        conn.execute(table_ddl(INGEST_TABLE))
        conn.execute(GENERATE_SQL.format(table=INGEST_TABLE), {"n": min(opts.rows, 1000)})

    by_key = {m.key: m for m in (BASELINE, *WIRE_METHODS)}
    results: dict[str, IngestResult] = {}
    baseline_latency: Any = None
    for key in RUN_ORDER:
        method = by_key[key]
        progress(f"engine: ingest via {method.label}")
        want = dict(expected)
        if baseline_latency is not None:
            # Float sums depend on rounding, so they are compared with the baseline's own.
            want["latency"] = baseline_latency
        result, found = measure_method(url, method, rows, opts, want, server_pid)
        if key == BASELINE.key and result.status == "ok" and found is not None:
            baseline_latency = found["latency"]
        results[key] = result

    try:
        with connect(url, opts.timeout, autocommit=True) as conn:
            conn.execute(f"drop table if exists {INGEST_TABLE}")
    except psycopg.Error as exc:
        progress(f"engine: could not drop {INGEST_TABLE}: {exc}")

    base_rate = results[BASELINE.key].rows_per_s
    for result in results.values():
        if result.rows_per_s is not None and base_rate:
            result.ratio_to_insert_select = result.rows_per_s / base_rate
    return [results[m.key] for m in (BASELINE, *WIRE_METHODS)]


# --- start times --------------------------------------------------------------------------------


@dataclass
class StartSample:
    start_s: float
    engine_reported_s: float | None
    first_data_query_s: float | None
    stop_s: float


@dataclass
class StartResult:
    mode: str
    label: str
    samples: list[StartSample] = field(default_factory=list)

    def med(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return median(values)


def engine_reported_ready(engine: EmbeddedEngine) -> float | None:
    for line in reversed(engine.stderr_tail(400)):
        match = READY_LINE.search(line)
        if match:
            return int(match.group(1)) / 1000
    return None


def measure_start(data_dir: Path | None, data_query: str | None = None) -> StartSample:
    engine = EmbeddedEngine(data_dir=data_dir)
    began = time.perf_counter()
    engine.start()
    start_s = time.perf_counter() - began
    first_query_s = None
    try:
        if data_query is not None:
            with psycopg.connect(engine.url, autocommit=True) as conn:
                conn.execute(data_query).fetchone()
            first_query_s = time.perf_counter() - began
        reported = engine_reported_ready(engine)
    finally:
        stop_s, _ = timed(engine.stop)
    return StartSample(start_s, reported, first_query_s, stop_s)


def prepare_warm_dir(data_dir: Path, rows: int) -> None:
    with (
        EmbeddedEngine(data_dir=data_dir) as engine,
        psycopg.connect(engine.url, autocommit=True) as conn,
    ):
        conn.execute(table_ddl(WARM_TABLE))
        conn.execute(f"select create_hypertable('{WARM_TABLE}', by_range('ts', interval '1 hour'))")
        conn.execute(GENERATE_SQL.format(table=WARM_TABLE), {"n": rows})


def run_starts(opts: Options) -> list[StartResult]:
    memory = StartResult("in_memory", "in-memory")
    cold = StartResult("cold", "cold (fresh empty data dir)")
    warm = StartResult("warm", f"warm (data dir, {opts.rows:,}-row hypertable)")

    def note(result: StartResult, run: int, sample: StartSample) -> None:
        progress(f"  {result.label}: run {run}/{opts.repeat}: {sample.start_s:.2f}s")
        result.samples.append(sample)

    progress("engine: start times")
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        for run in range(1, opts.repeat + 1):
            note(memory, run, measure_start(None))
        for run in range(1, opts.repeat + 1):
            note(cold, run, measure_start(Path(tmp) / f"cold-{run}"))
        warm_dir = Path(tmp) / "warm"
        progress(f"  preparing warm data dir ({opts.rows:,} rows)")
        prepare_warm_dir(warm_dir, opts.rows)
        for run in range(1, opts.repeat + 1):
            note(warm, run, measure_start(warm_dir, f"select count(*) from {WARM_TABLE}"))
    return [memory, cold, warm]


# --- report -------------------------------------------------------------------------------------


def start_table(results: Sequence[StartResult], repeat: int) -> str:
    headers = ["mode", "start s", "engine-reported s", "first data query s", "stop s", "runs"]
    rows = [
        [
            r.label,
            fmt_seconds(r.med("start_s")),
            fmt_seconds(r.med("engine_reported_s")),
            fmt_seconds(r.med("first_data_query_s")),
            fmt_seconds(r.med("stop_s")),
            " ".join(f"{s.start_s:.2f}" for s in r.samples),
        ]
        for r in results
    ]
    title = f"engine start: launch -> first query answered (median of {repeat})"
    notes = [
        "start s: EmbeddedEngine.start() until `select 1` answers (includes the node preflight).",
        "engine-reported s: the engine's own 'ready in' figure (WASM load, open, extension).",
        "first data query s: launch until `select count(*)` on the hypertable answers.",
    ]
    return render_table(title, headers, rows, "lrrrrl") + "\n" + "\n".join(notes)


def ingest_table(results: Sequence[IngestResult], opts: Options, target: str) -> str:
    headers = [
        "method",
        "median s",
        "rows/s",
        "vs INSERT...SELECT",
        "client CPU s",
        "engine CPU s",
        "status",
    ]
    rows = [
        [
            r.label,
            fmt_seconds(r.median_s),
            fmt_rate(r.rows_per_s),
            fmt_ratio(r.ratio_to_insert_select),
            fmt_seconds(median(r.client_cpu_s)),
            fmt_seconds(median(r.server_cpu_s)),
            r.status,
        ]
        for r in results
    ]
    title = (
        f"engine ingest: {opts.rows:,} rows into a fresh table, {target} (median of {opts.repeat})"
    )
    notes = [
        "wire paths include client-side encoding; every run ends with COMMIT.",
        "client CPU s: this Python process; engine CPU s: the engine process (embedded only).",
    ]
    for r in results:
        if r.method.startswith("copy") and r.ratio_to_insert_select is not None:
            verdict = "met" if r.ratio_to_insert_select >= COPY_GOAL else "MISSED"
            notes.append(
                f"goal {r.label} >= {COPY_GOAL:.2f} x INSERT...SELECT: {verdict} "
                f"({r.ratio_to_insert_select:.2f})"
            )
    for r in results:
        if r.error:
            notes.append(f"{r.label}: {r.error}")
    return render_table(title, headers, rows, "lrrrrrl") + "\n" + "\n".join(notes)


def run(opts: Options) -> GroupResult:
    started = time.perf_counter()
    starts: list[StartResult] = []
    engine_tail: list[str] = []
    if opts.database_url is None:
        starts = run_starts(opts)
        progress("engine: starting an in-memory engine for the ingest runs")
        with EmbeddedEngine() as engine:
            with psycopg.connect(engine.url, autocommit=True) as conn:
                server = server_info(conn)
            assert engine.process is not None
            ingest = run_ingest(engine.url, opts, engine.process.pid)
            if any(r.status != "ok" for r in ingest):
                engine_tail = engine.stderr_tail(20)
        target = "embedded engine, in memory"
        target_info: dict[str, Any] = {"kind": "embedded", "storage": "memory"}
    else:
        with psycopg.connect(opts.database_url, autocommit=True, connect_timeout=30) as conn:
            server = server_info(conn)
        ingest = run_ingest(opts.database_url, opts)
        details = describe_url(opts.database_url)
        target = f"{details.get('host', 'local socket')}:{details.get('port', 5432)}"
        target_info = {"kind": "database_url", **details}

    sections = []
    if starts:
        sections.append(start_table(starts, opts.repeat))
    sections.append(ingest_table(ingest, opts, target))
    if engine_tail:
        sections.append("engine log tail:\n" + "\n".join(f"  {line}" for line in engine_tail))
    payload = {
        "options": {"rows": opts.rows, "repeat": opts.repeat, "timeout_s": opts.timeout},
        "target": {**target_info, **server},
        "duration_s": round(time.perf_counter() - started, 3),
        "start": [
            {
                "mode": r.mode,
                "label": r.label,
                "median_start_s": r.med("start_s"),
                "median_engine_reported_s": r.med("engine_reported_s"),
                "median_first_data_query_s": r.med("first_data_query_s"),
                "median_stop_s": r.med("stop_s"),
                "samples": [asdict(s) for s in r.samples],
            }
            for r in starts
        ],
        "ingest": [asdict(r) for r in ingest],
        "engine_log_tail": engine_tail,
    }
    base = ingest[0]
    goals = tuple(
        Goal(
            f"{r.label} vs INSERT ... SELECT",
            r.ratio_to_insert_select,
            ">=",
            COPY_GOAL,
            "",
            f"{fmt_rate(r.rows_per_s)} vs {fmt_rate(base.rows_per_s)} rows/s",
        )
        for r in ingest
        if r.method.startswith("copy")
    )
    ok = all(r.status == "ok" for r in ingest)
    return GroupResult(payload, "\n\n".join(sections), ok, goals=goals)
