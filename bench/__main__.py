from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from bench import engine, ingest, late, otlp, rollups, span_events, worker
from bench.common import GroupResult, Options, progress, write_results

GROUPS: dict[str, Callable[[Options], GroupResult]] = {
    "engine": engine.run,
    "rollups": rollups.run,
    "ingest": ingest.run,
    "late": late.run,
    "otlp": otlp.run,
    "events": span_events.run,
    "worker": worker.run,
}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run benchmark groups and print their results."
    )
    parser.add_argument(
        "groups",
        nargs="*",
        metavar="GROUP",
        help=f"groups to run: {', '.join(GROUPS)} (default: all)",
    )
    parser.add_argument("--rows", type=positive_int, default=100_000, help="rows per ingest run")
    parser.add_argument(
        "--repeat", type=positive_int, default=3, help="runs per measurement; the median is shown"
    )
    parser.add_argument(
        "--database-url",
        help="run the ingest measurements against this PostgreSQL instead of a fresh in-memory "
        "embedded engine (engine start times are then skipped)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds one run may wait for the server before it counts as hung "
        "(default: max(30, rows / 2000))",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="rollups, worker: workload as a fraction of 500k traces and 2M LLM spans (default: 1)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    timeout = args.timeout if args.timeout is not None else max(30.0, args.rows / 2000)
    options = Options(
        rows=args.rows,
        repeat=args.repeat,
        database_url=args.database_url,
        timeout=timeout if timeout > 0 else None,
    )
    rollups.configure(scale=args.scale)
    worker.configure(scale=args.scale)
    ok = True
    for name in dict.fromkeys(args.groups or GROUPS):
        progress(f"== {name}")
        result = GROUPS[name](options)
        path = write_results(name, result.payload)
        print(result.report)
        print(f"\nresults written to {path}\n", flush=True)
        ok = ok and result.ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
