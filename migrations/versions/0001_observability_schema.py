from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from alembic import context, op

from worker.schema.install import install, uninstall

# Baseline: the observability schema from sql/. Revisions stay thin: a later revision's
# upgrade() also calls install(), which applies only the sql/incremental files a database has
# not recorded yet and re-runs sql/idempotent. install() runs each file in its own transaction
# (or none, for files marked "-- autocommit"), hence the autocommit block.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _driver_connection() -> psycopg.Connection[Any]:
    return op.get_bind().connection.driver_connection  # type: ignore[return-value]


def upgrade() -> None:
    with op.get_context().autocommit_block():
        report = install(_driver_connection())
    reports = context.config.attributes.get("install_reports")
    if reports is not None:
        reports.append(report)


def downgrade() -> None:
    # Drops schema observability (tables, data, schema_migrations). The extensions stay: they
    # are database-wide and other schemas may depend on them.
    with op.get_context().autocommit_block():
        uninstall(_driver_connection())
