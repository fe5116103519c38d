from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

import psycopg
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from worker.cli.common import add_database_url, database_url
from worker.schema.install import InstallError
from worker.schema.sqlfiles import SqlLayoutError

if TYPE_CHECKING:
    from worker.cli.common import SubParsers

log = logging.getLogger("worker.schema.migrate")


def register(subparsers: SubParsers) -> None:
    migrate = subparsers.add_parser(
        "migrate",
        help="apply the observability schema (sql/) to a database",
        description="Run the alembic migrations, which apply the versioned SQL in sql/: new "
        "sql/incremental files once each, sql/idempotent files every time. Prints what it "
        "applied.",
    )
    add_database_url(migrate)
    migrate.add_argument("--revision", default="head", help="alembic target (default: head)")
    migrate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    url = database_url(args, log)
    if not url:
        return 2
    if not getattr(args, "verbose", False):
        # The summary below says what was applied; alembic's and the installer's own INFO
        # lines would repeat it.
        for name in ("alembic", "worker.schema.install"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # Imported here so that `python -m worker --help` does not pay for alembic and the models.
    from worker.schema.migrate import current_revision, migrate
    from worker.schema.server_check import UnsupportedServer, ensure_supported

    shown = make_url(url).render_as_string(hide_password=True)
    print(f"migrating {shown}", flush=True)
    try:
        server = ensure_supported(url)
        print("\n".join(server.lines()), flush=True)
        reports = migrate(url, args.revision)
        revision = current_revision(url)
    except UnsupportedServer as exc:
        log.error("refusing to migrate: %s", exc)
        return 1
    except (InstallError, SqlLayoutError) as exc:
        log.error("%s", exc)
        return 1
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        log.error("cannot reach the database: %s", exc)
        return 1
    for report in reports:
        for line in report.lines():
            print(line)
    print(f"alembic revision: {revision or 'base'}")
    return 0
