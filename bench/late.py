from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import (
    GroupResult,
    Options,
    fmt_ratio,
    fmt_seconds,
    median,
    progress,
    render_table,
    server_info,
    watchdog,
)
from bench.ingest import BATCH, MAX_SPANS, bulk_writer, database, insert_select, pause_jobs
from bench.ingest_workload import EPOCH, make_genai_spans
from worker.schema.install import install

# What the late-data triggers (sql/incremental/019-stale-buckets.sql) cost the writers: the same
# loads with the triggers of observability.spans enabled and disabled, interleaved, side by side.
# "late" spans lie three days back (every statement notes buckets: the worst case); "live"
# spans lie in the last minutes, as a live stream's do (mostly the open hour: nothing noted).

Connection = psycopg.Connection[Any]
TRIGGERS = (("spans_note_stale_insert", "insert"), ("spans_note_stale_update", "update"))
TRANSITIONS = {
    "insert": "new table as new_rows",
    "update": "old table as old_rows new table as new_rows",
}


@dataclass
class Pair:
    key: str
    label: str
    spans: int
    on_s: list[float] = field(default_factory=list)
    off_s: list[float] = field(default_factory=list)
    notes: int = 0  # stale-bucket notes written by one run with the triggers on

    @property
    def cost(self) -> float | None:
        on, off = median(self.on_s), median(self.off_s)
        return on / off if on and off else None

    @property
    def paired(self) -> list[float]:
        """on / off within each run: the two ran minutes apart, so a busier moment of the
        machine weighs on both."""
        return [on / off for on, off in zip(self.on_s, self.off_s, strict=True) if off]


def set_triggers(conn: Connection, enabled: bool) -> None:
    # ALTER TABLE ... DISABLE TRIGGER is refused on hypertables with compression: drop and
    # create them as sql/incremental/019-stale-buckets.sql does.
    with conn.transaction():
        for name, event in TRIGGERS:
            conn.execute(f"drop trigger if exists {name} on observability.spans")
            if enabled:
                conn.execute(
                    f"create trigger {name} after {event} on observability.spans "
                    f"referencing {TRANSITIONS[event]} for each statement "
                    "execute function observability.note_stale_rows()"
                )


def measure(conn: Connection, opts: Options, n: int) -> list[Pair]:
    live_start = datetime.now(UTC) - timedelta(milliseconds=10 * n) - timedelta(minutes=2)
    progress(f"late: generating {n:,} GenAI spans twice (three days back, and live)")
    late, live = make_genai_spans(n, start=EPOCH), make_genai_spans(n, seed=3, start=live_start)
    loads: list[tuple[Pair, Callable[[Connection, Sequence[dict[str, Any]]], int], list[Any]]] = [
        (Pair("writer_late", f"write_batch, {BATCH:,} per batch, late", n), bulk_writer, late),
        (Pair("writer_live", f"write_batch, {BATCH:,} per batch, live", n), bulk_writer, live),
        (Pair("insert_select", "INSERT ... SELECT, late, one statement", n), insert_select, late),
    ]
    bulk_writer(conn, make_genai_spans(BATCH, seed=7))
    truncate(conn)
    for run in range(1, opts.repeat + 1):
        for enabled in (True, False) if run % 2 else (False, True):
            set_triggers(conn, enabled)
            for pair, load, spans in loads:
                with watchdog(conn, opts.timeout):
                    began = time.perf_counter()
                    written = load(conn, spans)
                    seconds = time.perf_counter() - began
                if written != len(spans):
                    raise RuntimeError(f"{pair.label}: wrote {written:,} of {len(spans):,}")
                (pair.on_s if enabled else pair.off_s).append(seconds)
                if enabled:
                    pair.notes = notes(conn)
                state = "on" if enabled else "off"
                progress(f"  {pair.label}, triggers {state}: run {run}: {seconds:.3f}s")
                truncate(conn)
    set_triggers(conn, True)
    return [pair for pair, _, _ in loads]


def notes(conn: Connection) -> int:
    row = conn.execute("select count(*) from observability.stale_buckets").fetchone()
    return int(row[0]) if row else 0


def truncate(conn: Connection) -> None:
    conn.execute(
        "truncate observability.spans, observability.stale_buckets, observability.trace_extents"
    )


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
            raise SystemExit("late benchmark: observability.spans is not empty")
        server = server_info(conn)
        pause_jobs(conn, scheduled=False)
        try:
            pairs = measure(conn, opts, n)
        finally:
            pause_jobs(conn, scheduled=True)
    title = (
        f"late-data triggers on observability.spans: {n:,} spans per load, "
        f"median of {opts.repeat} interleaved runs"
    )
    rows = [
        [
            p.label,
            fmt_seconds(median(p.off_s)),
            fmt_seconds(median(p.on_s)),
            fmt_ratio(p.cost),
            fmt_ratio(median(p.paired)),
            f"{p.notes:,}",
        ]
        for p in pairs
    ]
    headers = ["load", "off s", "on s", "on / off", "median of runs' on / off", "notes"]
    report = (
        render_table(title, headers, rows, "lrrrrr")
        + "\n"
        + "\n".join(
            f"{p.label}: on / off per run: " + ", ".join(f"{r:.2f}" for r in p.paired)
            for p in pairs
        )
    )
    payload = {
        "options": {"spans": n, "batch": BATCH, "repeat": opts.repeat},
        "target": {**target_info, **server},
        "duration_s": round(time.perf_counter() - started, 3),
        "pairs": [{**asdict(p), "cost": p.cost, "paired": p.paired} for p in pairs],
    }
    return GroupResult(payload, report, True)
