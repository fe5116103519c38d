from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from worker.models import Base
from worker.schema.migrate import (
    COMPARE_OPTIONS,
    CONNECT_ARGS,
    VERSION_TABLE_SCHEMA,
    sqlalchemy_url,
)

config = context.config

# Only the alembic command line configures logging; programmatic callers (python -m worker
# migrate, the tests) keep their own.
if config.cmd_opts is not None and config.config_file_name is not None:
    fileConfig(config.config_file_name)


def database_url() -> str:
    url = (
        config.attributes.get("database_url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise SystemExit("No database: set DATABASE_URL or pass -x url=postgresql://...")
    return sqlalchemy_url(url)


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=NullPool, connect_args=CONNECT_ARGS)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                version_table_schema=VERSION_TABLE_SCHEMA,
                transaction_per_migration=True,
                **COMPARE_OPTIONS,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    # The revisions call a Python installer on a live connection; there is no SQL to print.
    # The SQL itself is in sql/.
    raise SystemExit("offline (--sql) mode is not supported; read sql/ for the DDL")
run_migrations_online()
