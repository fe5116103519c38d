from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from worker.cli import backfill, db, demo, ingest, migrate, recost, status
from worker.embedded.engine import EngineUnavailable

if TYPE_CHECKING:
    from worker.cli.common import SubParsers

# Each registrar adds one top-level subcommand and sets `handler` (args -> exit code) on the
# parsers it creates. A new command (migrate, status, backfill, ...) is one module plus one entry.
Registrar = Callable[["SubParsers"], None]

COMMANDS: dict[str, Registrar] = {
    "backfill": backfill.register,
    "db": db.register,
    "demo": demo.register,
    "ingest": ingest.register,
    "migrate": migrate.register,
    "recost": recost.register,
    "status": status.register,
}

log = logging.getLogger("worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS.values():
        register(subparsers)
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same unwinding path as Ctrl-C, so context managers (engines,
    # connections) clean up. Later signals are ignored so cleanup itself isn't cut short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return int(args.handler(args))
    except EngineUnavailable as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
