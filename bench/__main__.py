from __future__ import annotations

import argparse
import traceback
from collections.abc import Callable, Sequence

from bench import engine, ingest, late, otlp, rollups, span_events, worker
from bench.common import Goal, GroupResult, Options, goal_table, progress, write_results

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
        help="run every group against this TimescaleDB (an empty observability schema, or none: "
        "the groups install it and remove their rows afterwards) instead of a fresh embedded "
        "engine; engine start times are then skipped",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 2 when a goal is missed (status 1 still means a group failed)",
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
    goals: list[tuple[str, Goal]] = []
    for name in dict.fromkeys(args.groups or GROUPS):
        progress(f"== {name}")
        try:
            result = GROUPS[name](options)
        except Exception:  # noqa: BLE001
            # One broken group must not hide the others' figures; it still fails the run.
            traceback.print_exc()
            print(f"group {name} failed before reporting its goals (traceback above)\n")
            ok = False
            continue
        path = write_results(name, {**result.payload, "goals": [g.as_dict() for g in result.goals]})
        print(result.report)
        print(f"\nresults written to {path}\n", flush=True)
        ok = ok and result.ok
        goals += [(name, goal) for goal in result.goals]
    return exit_status(goals, ok=ok, check=args.check)


def exit_status(goals: Sequence[tuple[str, Goal]], *, ok: bool, check: bool) -> int:
    """Print every goal with met/missed; 1 when a group failed, 2 (with check) when a goal was
    missed, else 0."""
    if goals:
        print(goal_table(goals))
    missed = [goal for _, goal in goals if not goal.met]
    print(f"\n{len(goals) - len(missed)} of {len(goals)} goals met", flush=True)
    if not ok:
        return 1
    return 2 if check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
