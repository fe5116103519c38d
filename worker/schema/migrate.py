from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from worker.models import SCHEMA, Base
from worker.schema.install import InstallReport, install

# Package data, like sql/ (see worker/schema/sqlfiles.py).
MIGRATIONS_DIR = Path(str(resources.files("worker.schema").joinpath("migrations")))
# In public, not in the observability schema: downgrading to base drops that schema, and
# alembic still has to write the (now empty) version table afterwards.
VERSION_TABLE_SCHEMA = "public"
# Extra psycopg connection arguments for the project's own connections: none are needed, on a
# server or on the embedded engine (whose prepared statements and DEALLOCATE ALL are per client).
CONNECT_ARGS: dict[str, Any] = {}
# Owned by the installer (sql/head.sql), not mapped by a model.
INSTALLER_TABLES = frozenset({"schema_migrations"})


def sqlalchemy_url(url: str, *, async_driver: bool = False) -> str:
    """postgres:// and postgresql:// URLs (as libpq and DATABASE_URL use them) -> psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(
            drivername="postgresql+psycopg_async" if async_driver else "postgresql+psycopg"
        )
    return parsed.render_as_string(hide_password=False)


def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    if type_ == "schema":
        return name == SCHEMA
    if type_ == "table":
        return parent_names.get("schema_name") == SCHEMA and name not in INSTALLER_TABLES
    return True


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # TimescaleDB keeps chunks in _timescaledb_internal (filtered by include_name); this also
    # skips any index or constraint it attaches under an internal name (_hyper_*, ts_*).
    return not (name or "").startswith(("_hyper_", "_timescaledb", "ts_"))


# Shared by migrations/env.py (alembic check / revision --autogenerate) and the tests.
# Comments are left out: they are written once, in sql/idempotent/002-comments.sql, and the
# catalog tests check them; repeating every comment in the models would only invite drift.
COMPARE_OPTIONS: dict[str, Any] = {
    "include_schemas": True,
    "include_name": include_name,
    "include_object": include_object,
    "compare_type": True,
    "compare_server_default": True,
    "autogenerate_plugins": ["alembic.autogenerate.*", "~alembic.autogenerate.comments"],
}


def alembic_config(database_url: str | None = None) -> Config:
    # No alembic.ini: an installed package has none. The checkout's alembic.ini (for the alembic
    # command) names the same script location.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> list[InstallReport]:
    """alembic upgrade; returns the installer reports of the revisions that ran."""
    config = alembic_config(database_url)
    reports: list[InstallReport] = []
    config.attributes["install_reports"] = reports
    command.upgrade(config, revision)
    return reports


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


@contextmanager
def connect(database_url: str) -> Iterator[Connection]:
    engine = create_engine(
        sqlalchemy_url(database_url), poolclass=NullPool, connect_args=CONNECT_ARGS
    )
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def migrate(database_url: str, revision: str = "head") -> list[InstallReport]:
    """alembic upgrade; at head already, run the installer anyway.

    So sql/idempotent is re-applied on every migrate (pgai style), and a schema dropped behind
    alembic's back comes back.
    """
    reports = upgrade(database_url, revision)
    if not reports and revision == "head":
        reports = [install_directly(database_url)]
    return reports


def libpq_url(url: str) -> str:
    """The inverse of sqlalchemy_url: a URL psycopg.connect() accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def install_directly(database_url: str) -> InstallReport:
    with psycopg.connect(libpq_url(database_url), autocommit=True, **CONNECT_ARGS) as conn:
        return install(conn)


def current_revision(database_url: str) -> str | None:
    with connect(database_url) as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table_schema": VERSION_TABLE_SCHEMA}
        )
        return context.get_current_revision()


def model_differences(connection: Connection) -> list[Any]:
    """What alembic autogenerate would change to make the database match the models."""
    context = MigrationContext.configure(connection, opts=dict(COMPARE_OPTIONS))
    return list(compare_metadata(context, Base.metadata))
