from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from worker.schema.install import ChecksumMismatch, InstallError, applied_migrations, install
from worker.schema.migrate import CONNECT_ARGS
from worker.schema.sqlfiles import SQL_DIR, SqlLayoutError, discover


@pytest.fixture
def db(migrated_database_url: str) -> Iterator[psycopg.Connection]:
    connection = psycopg.connect(migrated_database_url, autocommit=True, **CONNECT_ARGS)
    try:
        yield connection
    finally:
        # Whatever a test added through an extra incremental file goes again.
        connection.execute("drop table if exists observability.installer_probe")
        connection.execute(
            "delete from observability.schema_migrations where name like '%-installer-probe.sql'"
        )
        connection.close()


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    target = tmp_path / "sql"
    shutil.copytree(SQL_DIR, target)
    return target


def _add_incremental(sql_dir: Path, text: str) -> str:
    number = len(list((sql_dir / "incremental").iterdir())) + 1
    name = f"{number:03d}-installer-probe.sql"
    (sql_dir / "incremental" / name).write_text(text)
    return name


def _probe_exists(db: psycopg.Connection) -> bool:
    row = db.execute("select to_regclass('observability.installer_probe') is not null").fetchone()
    return row == (True,)


def test_every_incremental_file_is_recorded_with_its_hash(db: psycopg.Connection) -> None:
    expected = {f.name: f.sha256 for f in discover().incremental}
    assert applied_migrations(db) == expected


def test_second_install_applies_nothing_and_reruns_idempotent(db: psycopg.Connection) -> None:
    report = install(db)
    assert report.applied == []
    assert report.already_applied == [f.name for f in discover().incremental]
    assert report.idempotent == [f.name for f in discover().idempotent]
    assert "schema up to date" in report.lines()[0]


def test_changed_incremental_file_is_refused(db: psycopg.Connection, sql_copy: Path) -> None:
    edited = sql_copy / "incremental" / "002-traces.sql"
    edited.write_text(edited.read_text() + "\n-- a harmless looking edit\n")
    before = applied_migrations(db)
    with pytest.raises(ChecksumMismatch, match="002-traces.sql changed after it was applied"):
        install(db, sql_copy)
    assert applied_migrations(db) == before


def test_removed_incremental_file_is_refused(db: psycopg.Connection, sql_copy: Path) -> None:
    name = _add_incremental(sql_copy, "create table observability.installer_probe (x int);")
    install(db, sql_copy)
    with pytest.raises(InstallError, match=f"{name} was applied .* but is missing"):
        install(db)


def test_new_incremental_file_runs_exactly_once(db: psycopg.Connection, sql_copy: Path) -> None:
    name = _add_incremental(
        sql_copy,
        "create table observability.installer_probe (x int);\n"
        "insert into observability.installer_probe values (1);",
    )
    assert install(db, sql_copy).applied == [name]
    assert install(db, sql_copy).applied == []
    assert db.execute("select count(*) from observability.installer_probe").fetchone() == (1,)
    assert name in applied_migrations(db)


def test_failing_file_leaves_nothing_behind(db: psycopg.Connection, sql_copy: Path) -> None:
    name = _add_incremental(
        sql_copy, "create table observability.installer_probe (x int);\nselect 1 / 0;"
    )
    with pytest.raises(InstallError, match=f"incremental/{name} failed: division by zero"):
        install(db, sql_copy)
    assert not _probe_exists(db)
    assert name not in applied_migrations(db)


def test_autocommit_file_runs_outside_a_transaction(db: psycopg.Connection, sql_copy: Path) -> None:
    body = (
        "create table if not exists observability.installer_probe (x int);\n"
        "vacuum observability.installer_probe;\n"
    )
    name = _add_incremental(sql_copy, body)
    with pytest.raises(InstallError, match="cannot run inside a transaction block"):
        install(db, sql_copy)
    assert not _probe_exists(db)

    (sql_copy / "incremental" / name).write_text("-- autocommit\n" + body)
    assert install(db, sql_copy).applied == [name]
    assert _probe_exists(db)


def test_layout_errors_stop_before_the_database(db: psycopg.Connection, sql_copy: Path) -> None:
    (sql_copy / "incremental" / "099-too-far.sql").write_text("select 1;")
    with pytest.raises(SqlLayoutError):
        install(db, sql_copy)


def test_install_needs_an_idle_connection(migrated_database_url: str) -> None:
    with psycopg.connect(migrated_database_url, **CONNECT_ARGS) as connection:
        connection.execute("select 1")
        with pytest.raises(InstallError, match="not inside a transaction"):
            install(connection)
        connection.rollback()
