from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from worker.engine import EmbeddedEngine
from worker.health import rollup_health
from worker.migrate import migrate

if TYPE_CHECKING:
    from worker.commands import SubParsers

DEMO_DATA_DIR = Path(".demo") / "engine-data"


def register(subparsers: SubParsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="start the embedded engine, install the schema and show the rollups' status",
    )
    demo.add_argument("--data-dir", type=Path, default=DEMO_DATA_DIR)
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from worker.commands.status import render

    with EmbeddedEngine(data_dir=args.data_dir) as engine:
        print(f"embedded engine: {engine.url} (data in {args.data_dir})", flush=True)
        for report in migrate(engine.url):
            print("\n".join(report.lines()), flush=True)
        with psycopg.connect(engine.url, autocommit=True) as conn:
            print("\n".join(render(rollup_health(conn))))
    return 0
