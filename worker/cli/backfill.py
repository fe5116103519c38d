from __future__ import annotations

import argparse
import json
import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from worker.cli.common import add_database_url, database_url, iso_time
from worker.settings import SettingsError, WorkerSettings

if TYPE_CHECKING:
    from worker.cli.common import SubParsers
    from worker.rollups.sync import SyncCounts

log = logging.getLogger("worker.backfill")

EXIT_BUSY = 3


def register(subparsers: SubParsers) -> None:
    backfill = subparsers.add_parser(
        "backfill",
        help="refresh the rollups over a past range and sync them into metrics_aggregates",
        description="Walk [--from, --to) in bounded batches: force refresh_continuous_aggregate "
        "over each batch (hourly, then daily, then weekly, up to --granularity), then upsert "
        "its rows into metrics_aggregates. --to may fall in the bucket that holds now, not "
        "later. Progress is recorded after every batch; --resume "
        "continues an interrupted backfill of the same range. Only one backfill per "
        "granularity runs at a time: another one waits up to --wait seconds, then gives up.",
    )
    add_database_url(backfill)
    backfill.add_argument("--from", dest="start", required=True, type=iso_time)
    backfill.add_argument("--to", dest="end", required=True, type=iso_time)
    backfill.add_argument(
        "--granularity", required=True, help="hour, day or week (bucket size synced)"
    )
    backfill.add_argument(
        "--resume", action="store_true", help="continue an unfinished backfill of this range"
    )
    backfill.add_argument(
        "--force",
        action="store_true",
        help="re-materialize every bucket, not only those with changed raw rows",
    )
    backfill.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a running backfill of the granularity (default: give up at once)",
    )
    backfill.add_argument("--json", action="store_true", help="print the summary as JSON")
    backfill.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    url = database_url(args, log)
    if not url:
        return 2
    try:
        settings = WorkerSettings.from_env()
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    # Task metrics belong to the worker's /metrics; a backfill run from a shell must not add its
    # numbers there (nor fail when the worker's directory is missing).
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from tqdm import tqdm

    from worker.rollups import (
        ConcurrentRefresh,
        InvalidWindow,
        LeaseBusy,
        backfill_metrics,
    )
    from worker.rollups.service import backfill_window
    from worker.rollups.windows import Window

    try:
        window = backfill_window(args.granularity, args.start, args.end, datetime.now(UTC))
    except InvalidWindow as exc:
        log.error("%s", exc)
        return 2
    with tqdm(total=window.buckets, unit="bucket", desc=f"backfill {args.granularity}") as bar:

        def progress(batch: Window, counts: SyncCounts) -> None:
            # by position rather than by increments, so a resumed backfill starts part-way
            bar.update(Window(window.granularity, window.start, batch.end).buckets - bar.n)
            bar.set_postfix(created=counts.created, updated=counts.updated)

        try:
            summary = backfill_metrics(
                args.start,
                args.end,
                args.granularity,
                database_url=url,
                resume=args.resume,
                force=args.force,
                wait_seconds=args.wait,
                progress=progress,
                settings=settings,
            )
        except InvalidWindow as exc:
            log.error("%s", exc)
            return 2
        except LeaseBusy as exc:
            log.error(
                "another aggregation run of this granularity is under way (%s); try again "
                "later or pass --wait",
                exc,
            )
            return EXIT_BUSY
        except ConcurrentRefresh as exc:
            log.error("the database kept refreshing the same rollup (%s); try again later", exc)
            return EXIT_BUSY
        except psycopg.OperationalError as exc:
            log.error("cannot reach the database: %s", exc)
            return 1
        except KeyboardInterrupt:
            bar.close()
            log.error("interrupted: run the same command with --resume to continue")
            raise
    _print(summary, as_json=args.json)
    return 0


def _print(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    window = summary["window"]
    resumed = f" (resumed from {summary['resumed_from']})" if summary["resumed_from"] else ""
    print(
        f"backfilled {summary['buckets']} {summary['granularity']} buckets from "
        f"{window['start']} to {window['end']}{resumed} in {summary['duration']:.1f} s: "
        f"{summary['metrics_created']} rows created, {summary['metrics_updated']} updated, "
        f"{summary['metrics_deleted']} deleted"
    )
