from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from worker.engine import EmbeddedEngine

if TYPE_CHECKING:
    from worker.commands import SubParsers

DEMO_DATA_DIR = Path(".demo") / "engine-data"


def register(subparsers: SubParsers) -> None:
    demo = subparsers.add_parser("demo", help="start the engine and show what it runs")
    demo.add_argument("--data-dir", type=Path, default=DEMO_DATA_DIR)
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with EmbeddedEngine(data_dir=args.data_dir) as engine:
        print(f"DATABASE_URL={engine.url}", flush=True)
        with psycopg.connect(engine.url, autocommit=True) as conn:
            row = conn.execute(
                "select extversion from pg_extension where extname = 'timescaledb'"
            ).fetchone()
    if row is None:
        print("timescaledb: extension not installed in this database")
    else:
        print(f"timescaledb: {row[0]}")
    return 0
