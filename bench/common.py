from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

RESULTS_DIR = Path(__file__).resolve().parent / "results"

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    rows: int
    repeat: int
    database_url: str | None
    timeout: float | None


@dataclass(frozen=True)
class Goal:
    """One goal of a group: a measured figure against a bound, e.g. >= 100 (x) or <= 5 (%)."""

    name: str
    value: float | None  # None: not measured (the run failed first)
    op: str  # ">=" or "<="
    target: float
    unit: str = "x"  # "x", "%" or "" (a plain fraction)
    detail: str = ""  # what was measured, e.g. "0.012 s vs 1.75 s"

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def measured(self) -> str:
        if self.value is None:
            return "-"
        if self.unit == "%":
            return f"{self.value:.2f}%"
        return f"{self.value:.1f}x" if self.unit == "x" else f"{self.value:.2f}"

    def bound(self) -> str:
        return f"{self.op} {self.target:g}{self.unit}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "goal": self.bound(),
            "met": self.met,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GroupResult:
    payload: dict[str, Any]
    report: str
    ok: bool  # False: the group could not measure what it should (errors, wrong data)
    goals: tuple[Goal, ...] = ()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of another process, where /proc offers it."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces, so the fields are counted after its closing paren.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], align: str
) -> str:
    """align holds one 'l' or 'r' per column."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if side == "r" else cell.ljust(width)
            for cell, width, side in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body = [line(headers), rule, *(line(row) for row in rows)]
    return "\n".join([title, "=" * len(title), *body])


def describe_url(url: str) -> dict[str, str]:
    """Connection details worth recording, never the password."""
    params = conninfo_to_dict(url)
    return {k: str(params[k]) for k in ("host", "port", "dbname", "user") if params.get(k)}


def server_info(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    version = conn.execute("show server_version").fetchone()
    timescale = conn.execute(
        "select extversion from pg_extension where extname = 'timescaledb'"
    ).fetchone()
    return {
        "server_version": version[0] if version else None,
        "timescaledb": timescale[0] if timescale else None,
    }


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "psycopg_impl": psycopg.pq.__impl__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


@contextlib.contextmanager
def watchdog(conn: psycopg.Connection[Any], timeout: float | None) -> Iterator[threading.Event]:
    """Cut the connection's socket if the block runs longer than timeout.

    A client waiting for a reply that never comes is then woken by an OperationalError instead
    of waiting forever; the returned event tells such a timeout apart from other errors.
    """
    fired = threading.Event()
    if timeout is None:
        yield fired
        return

    def expire() -> None:
        fired.set()
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def write_results(group: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{group}.json"
    document = {
        "group": group,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def goal_table(results: Sequence[tuple[str, Goal]]) -> str:
    rows = [
        [group, g.name, g.measured(), g.bound(), "met" if g.met else "MISSED", g.detail]
        for group, g in results
    ]
    return render_table(
        "goals", ["group", "goal", "measured", "bound", "met", "figures"], rows, "llrrll"
    )
