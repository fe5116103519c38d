from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from worker.embedded.engine import EmbeddedEngine

if TYPE_CHECKING:
    from worker.cli.common import SubParsers

log = logging.getLogger("worker.db")


def register(subparsers: SubParsers) -> None:
    db = subparsers.add_parser("db", help="manage the embedded database engine")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    serve = actions.add_parser(
        "serve",
        help="run the embedded engine until interrupted",
        description="Start the embedded engine, print DATABASE_URL=... on stdout and serve "
        "until SIGINT or SIGTERM.",
    )
    serve.add_argument(
        "--data-dir", type=Path, default=None, help="persist data here (default: in memory)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    serve.add_argument("--startup-timeout", type=float, default=120.0, metavar="SECONDS")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    engine = EmbeddedEngine(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        startup_timeout=args.startup_timeout,
    )
    try:
        with engine:
            print(f"DATABASE_URL={engine.url}", flush=True)
            where = f"data dir {args.data_dir}" if args.data_dir else "in memory"
            log.info("engine ready on port %d (%s); Ctrl-C to stop", engine.port, where)
            while engine.running:
                time.sleep(0.5)
            log.error("engine exited unexpectedly; last output:")
            for line in engine.stderr_tail():
                log.error("  %s", line)
            return 1
    except KeyboardInterrupt:
        log.info("engine stopped")
        return 0
