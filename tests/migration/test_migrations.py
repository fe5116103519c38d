from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.observability_db import reset_to_head
from tests.sql_catalog import dump_catalog
from worker.schema.install import install, uninstall
from worker.schema.migrate import (
    CONNECT_ARGS,
    current_revision,
    downgrade,
    migrate,
    upgrade,
)
from worker.schema.sqlfiles import discover

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def url(migrated_database_url: str) -> Iterator[str]:
    """The shared database, put back at alembic head with an empty schema afterwards."""
    yield migrated_database_url
    reset_to_head(migrated_database_url)


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, **CONNECT_ARGS)


def _catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with _connect(url) as conn:
        return dump_catalog(conn)


def _leftovers(url: str) -> dict[str, Any]:
    with _connect(url) as conn:
        return {
            "schema": conn.execute(
                "select count(*) from pg_namespace where nspname = 'observability'"
            ).fetchone(),
            "hypertables": conn.execute(
                "select count(*) from _timescaledb_catalog.hypertable"
                " where schema_name = 'observability'"
            ).fetchone(),
            "alembic_version": conn.execute(
                "select count(*) from public.alembic_version"
            ).fetchone(),
        }


def test_downgrade_to_base_leaves_a_clean_database(url: str) -> None:
    assert current_revision(url) == "0001"
    downgrade(url, "base")
    assert current_revision(url) is None
    assert _leftovers(url) == {
        "schema": (0,),
        "hypertables": (0,),
        "alembic_version": (0,),
    }


def test_upgrade_downgrade_upgrade(url: str) -> None:
    before = _catalog(url)
    downgrade(url, "base")
    reports = upgrade(url, "head")
    assert [r.applied for r in reports] == [[f.name for f in discover().incremental]]
    assert current_revision(url) == "0001"
    downgrade(url, "base")
    upgrade(url, "head")
    assert _catalog(url) == before


def test_upgrade_head_on_an_empty_database(url: str) -> None:
    with _connect(url) as conn:
        uninstall(conn)
        conn.execute("delete from public.alembic_version")
    assert current_revision(url) is None
    upgrade(url, "head")
    assert current_revision(url) == "0001"
    assert {row[0] for row in _catalog(url)["hypertables"]} == {
        "traces",
        "spans",
        "span_events",
        "chat_messages",
        "document_events",
        "metrics_aggregates",
    }


def test_fresh_install_equals_a_replay_of_the_migrations(url: str) -> None:
    downgrade(url, "base")
    with _connect(url) as conn:
        install(conn)
        installed = dump_catalog(conn)
        uninstall(conn)
    upgrade(url, "head")
    replayed = _catalog(url)
    assert len(installed["dimensions"]) == 6 and len(installed["indexes"]) > 20
    assert installed.keys() == replayed.keys()
    for key in installed:
        assert installed[key] == replayed[key], key


def test_migrate_at_head_reapplies_idempotent_files(url: str) -> None:
    with _connect(url) as conn:
        conn.execute("comment on table observability.traces is 'stale'")
    reports = migrate(url)
    assert [r.applied for r in reports] == [[]]
    with _connect(url) as conn:
        row = conn.execute("select obj_description('observability.traces'::regclass)").fetchone()
    assert row is not None and row[0] != "stale"


def test_migrate_restores_a_schema_dropped_behind_alembic(url: str) -> None:
    with _connect(url) as conn:
        uninstall(conn)
    migrate(url)
    assert current_revision(url) == "0001"
    assert len(_catalog(url)["hypertables"]) == 6


def test_alembic_command_line_check(migrated_database_url: str) -> None:
    # The real `alembic check`: the models equal the migrated database. -x url= is used, and
    # DATABASE_URL removed, so the test can't pass by reading another database.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    alembic = [sys.executable, "-m", "alembic", "-x", f"url={migrated_database_url}"]
    result = subprocess.run(
        [*alembic, "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr
    result = subprocess.run(
        [*alembic, "current"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert "0001 (head)" in result.stdout
