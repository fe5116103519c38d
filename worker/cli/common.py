from __future__ import annotations

import argparse
import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="postgresql://... (default: the DATABASE_URL environment variable)",
    )


def database_url(args: argparse.Namespace, log: logging.Logger) -> str | None:
    """The --database-url argument, else DATABASE_URL; logs the error when there is neither."""
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        log.error("no database: pass --database-url or set DATABASE_URL")
    return url


def iso_time(text: str) -> datetime:
    """argparse type: an ISO 8601 date or time; without an offset it is UTC, as buckets are."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or time: {text!r} (for example 2026-11-01 or "
            "2026-11-01T12:00:00+01:00)"
        ) from None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)
