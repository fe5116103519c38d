from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg

from worker.cli.common import add_database_url, database_url, iso_time
from worker.rollups.refresh import ConcurrentRefresh

if TYPE_CHECKING:
    from worker.cli.common import SubParsers
    from worker.rollups.recost import RecostResult

log = logging.getLogger("worker.recost")


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "recost",
        help="recompute span costs from the model price table and refresh the cost rollups",
        description="Price the LLM spans that started in [--from, --to) again from "
        "observability.model_prices: spans whose cost was computed from the table and spans "
        "without a cost. Costs the application sent itself are kept. Trace costs that are the "
        "sum of their spans' costs (traces received over OTLP) are summed again. Then refresh "
        "the llm_spans and traces hourly, daily and weekly rollups over the window, even when "
        "no cost changed: after a failed refresh, the same command again repairs them. Times "
        "are ISO 8601; without a UTC offset they are UTC.",
    )
    parser.add_argument(
        "--from",
        dest="start",
        required=True,
        type=iso_time,
        metavar="ISO",
        help="spans started at or after",
    )
    parser.add_argument(
        "--to", dest="end", required=True, type=iso_time, metavar="ISO", help="and before this time"
    )
    parser.add_argument("--model", help="only spans of this model (gen_ai.request.model)")
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would change, write nothing"
    )
    add_database_url(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from worker.rollups.recost import RecostError, recost

    if args.end <= args.start:
        log.error("--to (%s) must be after --from (%s)", args.end, args.start)
        return 2
    url = database_url(args, log)
    if not url:
        return 2
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            result = recost(conn, args.start, args.end, model=args.model, dry_run=args.dry_run)
    except RecostError as exc:
        log.error("%s", exc)
        return 2
    except ConcurrentRefresh as exc:
        # 55P03, after the retries: a refresh policy kept the rollups locked. Running the same
        # command again refreshes them even when the costs were already changed.
        log.error(
            "another refresh of the rollups is running; run the same recost again in a minute, "
            "it refreshes the rollups over the window whether or not a cost still changes (%s)",
            exc,
        )
        return 1
    except psycopg.OperationalError as exc:
        log.error("cannot reach the database: %s", exc)
        return 1
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
        log.error("the model price table is not installed (python -m worker migrate): %s", exc)
        return 1
    print("\n".join(render(result)))
    return 0


def render(result: RecostResult) -> list[str]:
    model = f", model {result.model}" if result.model else ""
    lines = [
        f"spans from {_time(result.start)} to {_time(result.end)}{model}",
        f"  priced from the table or without a cost: {result.candidates:,}",
        f"  cost changed: {result.changed:,}"
        + (f" (total {result.cost_before} -> {result.cost_after} USD)" if result.changed else ""),
        f"  trace costs (sums of span costs) changed: {result.traces_changed:,}",
    ]
    if result.dry_run:
        lines.append("dry run: nothing was written and no rollup was refreshed")
    for refresh in result.refreshed:
        lines.append(
            f"refreshed {refresh.rollup} from {_time(refresh.start)} to {_time(refresh.end)}"
        )
    return lines


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
