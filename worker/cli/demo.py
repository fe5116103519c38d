from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy.engine import make_url

from worker.cli.common import add_database_url
from worker.demo.workload import MARKER
from worker.embedded.engine import EmbeddedEngine, EngineUnavailable
from worker.schema.migrate import migrate

if TYPE_CHECKING:
    from worker.cli.common import SubParsers
    from worker.demo.pipeline import Existing

log = logging.getLogger("worker.demo")

DEMO_DIR = Path(".demo")
DEMO_DATA_DIR = DEMO_DIR / "engine-data"
DEFAULT_TRACES_PER_HOUR = 600
DEFAULT_SEED = 42
# A stored workload older than this is not re-synced: its oldest raw rows are near the 30-day
# retention horizon, past which refreshing the rollups would delete rolled-up rows.
REUSE_MAX_AGE = timedelta(days=21)


def register(subparsers: SubParsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="generate a week of LLM/RAG traffic into the embedded engine or your database, "
        "aggregate it and show a summary and a dashboard",
        description="Start the embedded engine on a kept data directory (or, with "
        "--database-url or DATABASE_URL, use that TimescaleDB database), install or update "
        "the schema, write 7 days of generated LLM/RAG traces marked with the attribute "
        f"{MARKER} (once: a later run reuses them; other rows are left alone), sync "
        "metrics_aggregates for every granularity, then print a summary and write "
        "dashboard.png and dashboard.html.",
    )
    add_database_url(demo)
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=DEMO_DATA_DIR,
        help="embedded engine data (kept); not used with a database URL",
    )
    demo.add_argument("--out", type=Path, default=DEMO_DIR, help="where the dashboard goes")
    demo.add_argument(
        "--traces-per-hour",
        type=_positive,
        help=f"average traffic (default {DEFAULT_TRACES_PER_HOUR}); 5 spans per trace",
    )
    demo.add_argument(
        "--seed", type=int, help=f"the workload's random seed (default {DEFAULT_SEED})"
    )
    demo.add_argument(
        "--fresh",
        action="store_true",
        help="wipe the embedded engine's data directory and generate anew (not with a "
        "database URL)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(handler=run)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value > 100_000:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 100000, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from worker.demo.pipeline import DemoError
    from worker.rollups import ConcurrentRefresh, InvalidWindow, LeaseBusy

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.error(
            "the demo draws its dashboard with matplotlib, an optional dependency: "
            "pip install 'llm-observability-store[demo]' (in a checkout: pip install -e '.[demo]')"
        )
        return 1
    from sqlalchemy.exc import OperationalError as SqlAlchemyOperationalError

    from worker.schema.install import InstallError
    from worker.schema.server_check import UnsupportedServer

    url = args.database_url or os.environ.get("DATABASE_URL")
    try:
        if url:
            if args.fresh:
                raise DemoError(
                    "--fresh wipes the embedded engine's data directory and is not used with a "
                    f"database URL; the demo's rows in a database carry the attribute "
                    f"{MARKER} (docs/demo.md, On your own database, says how to remove them)"
                )
            shown = make_url(url).render_as_string(hide_password=True)
            return _run(args, url, f"database {shown}")
        if args.fresh:
            wipe(args.data_dir)
        with EmbeddedEngine(data_dir=args.data_dir) as engine:
            return _run(args, engine.url, None)
    except (
        DemoError,
        EngineUnavailable,
        InvalidWindow,
        LeaseBusy,
        ConcurrentRefresh,
        UnsupportedServer,
        InstallError,
    ) as exc:
        log.error("%s", exc)
        return 1
    except (psycopg.OperationalError, SqlAlchemyOperationalError) as exc:
        log.error("cannot reach the database: %s", exc)
        return 1


def wipe(data_dir: Path) -> None:
    """Delete an engine data directory, refusing anything that does not look like one."""
    from worker.demo.pipeline import DemoError

    if not data_dir.exists():
        return
    if not data_dir.is_dir() or not (
        (data_dir / "PG_VERSION").is_file() or not any(data_dir.iterdir())
    ):
        raise DemoError(
            f"--fresh: {data_dir} is not an engine data directory (no PG_VERSION); "
            "not deleting it. Pass --data-dir to a directory of its own."
        )
    shutil.rmtree(data_dir)
    print(f"wiped {data_dir}", flush=True)


def _run(args: argparse.Namespace, url: str, database: str | None) -> int:
    """database: how to name a user's database; None for the embedded engine."""
    from worker.demo.dashboard import render_html, render_png
    from worker.demo.pipeline import existing_workload
    from worker.demo.summary import build_summary, file_lines
    from worker.schema.server_check import ensure_supported

    clock = time.perf_counter()
    if database is None:
        print(f"embedded engine: {url} (data kept in {args.data_dir})", flush=True)
    else:
        print(f"{database}: demo rows are marked with the attribute {MARKER}", flush=True)
        args.where = database
        print("\n".join(ensure_supported(url).lines()), flush=True)
    applied = [line for report in migrate(url) for line in report.lines()]
    print("\n".join(applied), flush=True)
    progress = not args.no_progress
    with psycopg.connect(url, autocommit=True) as conn:
        existing = existing_workload(conn)
        if existing is None:
            start, end = _generate(conn, url, args, progress)
        else:
            start, end = _reuse(url, existing, args, progress)
        summary = build_summary(conn, start, end)
        out: Path = args.out
        png = render_png(conn, start, end, out / "dashboard.png")
        html = render_html(summary, png, out / "dashboard.html")
    print("\n".join(summary.lines()))
    print()
    files = [("dashboard picture", str(png)), ("dashboard page", str(html))]
    if database is None:
        files += [
            ("engine data", str(args.data_dir)),
            ("engine log", str(args.data_dir / "engine.log")),
        ]
    print("\n".join(file_lines(files)))
    print(f"\ndemo done in {time.perf_counter() - clock:.0f} s")
    return 0


def _generate(
    conn: psycopg.Connection[Any], url: str, args: argparse.Namespace, progress: bool
) -> tuple[datetime, datetime]:
    from worker.demo.pipeline import generate, late_rows, load_prices
    from worker.demo.workload import Generator, demo_window

    start, end = demo_window(datetime.now(UTC))
    seed = DEFAULT_SEED if args.seed is None else args.seed
    rate = DEFAULT_TRACES_PER_HOUR if args.traces_per_hour is None else args.traces_per_hour
    generator = Generator(seed, load_prices(conn), rate)
    print(
        f"generating 7 days of traffic ({start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC), "
        f"{rate:g} traces per hour on average, seed {seed}",
        flush=True,
    )
    clock = time.perf_counter()
    written = generate(conn, generator, start, end, show_progress=progress)
    print(
        f"generated {written.traces:,} traces, {written.spans:,} spans, "
        f"{written.chat_messages:,} chat messages and {written.document_events:,} document "
        f"events in {time.perf_counter() - clock:.1f} s",
        flush=True,
    )
    _sync(url, start, end, progress)
    late = late_rows(conn, url, generator, end)
    print(
        f"late-arriving rows: {late.traces:,} traces written into the last two complete hours, "
        f"{late.start:%H:%M} .. {late.end:%H:%M} UTC, already synced",
        flush=True,
    )
    synced = f"{late.synced_start:%H:%M} .. {late.synced_end:%H:%M} UTC"
    if late.metrics_updated > 0:
        print(
            "  picked up by the scheduled hourly run (the task beat sends every hour, which "
            f"syncs the latest two complete hours; here {synced}): "
            f"{late.metrics_updated:,} metric rows updated, {late.metrics_created:,} created. "
            "Day and week rows follow at their own scheduled runs, or when the demo runs again.",
            flush=True,
        )
    else:
        print(
            f"  NOT picked up: the scheduled hourly run ({synced}) updated no metric rows",
            flush=True,
        )
    return start, end


def _reuse(
    url: str, existing: Existing, args: argparse.Namespace, progress: bool
) -> tuple[datetime, datetime]:
    from worker.demo.pipeline import DemoError
    from worker.demo.workload import DAYS

    if existing.end - existing.start < timedelta(days=DAYS):
        raise DemoError(
            f"the workload in {_where(args)} is incomplete ({existing.traces:,} traces, "
            f"{existing.start:%Y-%m-%d %H:%M} .. {existing.end:%Y-%m-%d %H:%M} UTC, not "
            f"{DAYS} days: an interrupted run?): {_again(args)}"
        )
    if datetime.now(UTC) - existing.start > REUSE_MAX_AGE:
        raise DemoError(
            f"the workload in {_where(args)} starts {existing.start:%Y-%m-%d %H:%M} UTC, too "
            f"close to the 30-day raw-data retention to re-aggregate: {_again(args)}"
        )
    rate = existing.traces_per_hour
    stored = f"seed {existing.seed}, " + (
        f"{rate:g} traces per hour" if rate is not None else "traces per hour not recorded"
    )
    print(
        f"reusing the workload already in {_where(args)}: {existing.traces:,} traces, "
        f"{existing.start:%Y-%m-%d %H:%M} .. {existing.end:%Y-%m-%d %H:%M} UTC ({stored}; "
        f"{_regenerate(args)})",
        flush=True,
    )
    # Only options given on the command line: their defaults say nothing about the stored run.
    ignored = [
        f"--{name} {value:g}"
        for name, value, kept in (
            ("seed", args.seed, existing.seed),
            ("traces-per-hour", args.traces_per_hour, rate),
        )
        if value is not None and value != kept
    ]
    if ignored:
        print(
            f"NOTE: {' and '.join(ignored)} ignored: the stored workload ({stored}) is reused "
            f"as it is ({_regenerate(args)} with these options).",
            flush=True,
        )
    _sync(url, existing.start, existing.end, progress)
    return existing.start, existing.end


def _regenerate(args: argparse.Namespace) -> str:
    if getattr(args, "where", None):
        return "to regenerate it, delete the demo's rows (see docs/demo.md, On your own database)"
    return "--fresh regenerates it"


def _again(args: argparse.Namespace) -> str:
    if getattr(args, "where", None):
        return "delete the demo's rows (see docs/demo.md, On your own database) and run again"
    return "run again with --fresh"


def _where(args: argparse.Namespace) -> str:
    return getattr(args, "where", None) or str(args.data_dir)


def _sync(url: str, start: datetime, end: datetime, progress: bool) -> None:
    from worker.demo.pipeline import sync

    clock = time.perf_counter()
    summaries = sync(url, start, end, show_progress=progress)
    counts = ", ".join(
        f"{g}: {s['buckets']} buckets, {s['metrics_created']:,} created, "
        f"{s['metrics_updated']:,} updated"
        for g, s in summaries.items()
    )
    print(
        f"synced metrics_aggregates in {time.perf_counter() - clock:.1f} s ({counts})", flush=True
    )
