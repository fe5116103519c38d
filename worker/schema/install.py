from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

from worker.schema.sqlfiles import SQL_DIR, SqlFile, SqlLayout, discover, split_statements
from worker.schema.sqltemplate import TemplateError, render_for, sketch_merge_language

SCHEMA = "observability"
MIGRATIONS_TABLE = f"{SCHEMA}.schema_migrations"
# Serialises concurrent installers: each file runs under this transaction-level advisory lock
# and re-checks whether it was applied meanwhile.
INSTALL_LOCK_KEY = 0x0B5_5C4E

log = logging.getLogger(__name__)


class InstallError(RuntimeError):
    """A versioned SQL file could not be applied, or the database disagrees with sql/."""


class ChecksumMismatch(InstallError):
    """An incremental file that the database has already applied was edited afterwards."""


@dataclass
class InstallReport:
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    idempotent: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the server's, while the files ran
    sketch_merge_language: str | None = None

    def lines(self) -> list[str]:
        lines = [f"applied {name}" for name in self.applied]
        lines += [f"re-ran {name}" for name in self.idempotent]
        if not self.applied:
            lines.insert(0, "schema up to date: no new incremental files")
        lines.append(
            f"{len(self.applied)} incremental applied, {len(self.already_applied)} already "
            f"applied, {len(self.idempotent)} idempotent re-run"
        )
        lines += [f"warning: {message}" for message in self.warnings]
        if self.sketch_merge_language == "c":
            lines.append("percentile sketches merge in C (engine/sketch)")
        elif self.sketch_merge_language is not None:
            lines.append(
                "percentile sketches merge in PL/pgSQL: the C merge (engine/sketch) is not "
                "installed on this server; see docs/deployment.md"
            )
        return lines


def applied_migrations(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Recorded incremental files (name -> sha256); empty when nothing was ever installed."""
    exists = conn.execute("select pg_catalog.to_regclass(%s) is not null", [MIGRATIONS_TABLE])
    row = exists.fetchone()
    if row is None or not row[0]:
        return {}
    rows = conn.execute(f"select name, sha256 from {MIGRATIONS_TABLE} order by name").fetchall()
    return {name: sha for name, sha in rows}


def verify_applied(applied: dict[str, str], layout: SqlLayout) -> None:
    files = {f.name: f for f in layout.incremental}
    for name, recorded in sorted(applied.items()):
        current = files.get(name)
        if current is None:
            raise InstallError(
                f"incremental/{name} was applied to this database but is missing from "
                "sql/incremental; applied incremental files must never be removed."
            )
        if current.sha256 != recorded:
            raise ChecksumMismatch(
                f"incremental/{name} changed after it was applied to this database "
                f"(recorded sha256 {recorded[:12]}…, file now {current.sha256[:12]}…). "
                "Applied incremental files must never change: revert the edit and put the "
                "change in a new incremental file."
            )


@contextmanager
def _autocommit(conn: psycopg.Connection[Any]) -> Iterator[None]:
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise InstallError("install() needs a connection that is not inside a transaction")
    previous = conn.autocommit
    conn.autocommit = True
    try:
        yield
    finally:
        if conn.info.transaction_status == pq.TransactionStatus.IDLE:
            conn.autocommit = previous


def _lock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select pg_catalog.pg_advisory_xact_lock(%s)", [INSTALL_LOCK_KEY])


def _run(conn: psycopg.Connection[Any], sql_file: SqlFile) -> None:
    try:
        # Placeholders such as @sketch_schema@ are filled in from the database; the recorded
        # sha256 stays that of the file as written.
        text = render_for(conn, sql_file.text)
        if sql_file.autocommit:
            for statement in split_statements(text):
                conn.execute(statement.encode())
        else:
            conn.execute(text.encode())
    except (psycopg.Error, TemplateError) as exc:
        raise InstallError(f"{sql_file.label} failed: {exc}") from exc


def _apply_incremental(conn: psycopg.Connection[Any], sql_file: SqlFile) -> bool:
    record = f"insert into {MIGRATIONS_TABLE} (name, sha256) values (%s, %s)"
    if sql_file.autocommit:
        # No transaction to hold the lock in: autocommit files must be safe to re-run
        # (if not exists guards), in case two installers race or one stops half-way.
        _run(conn, sql_file)
        conn.execute(record + " on conflict (name) do nothing", [sql_file.name, sql_file.sha256])
        return True
    with conn.transaction():
        _lock(conn)
        if sql_file.name in applied_migrations(conn):
            return False
        _run(conn, sql_file)
        conn.execute(record, [sql_file.name, sql_file.sha256])
    return True


def _apply_idempotent(conn: psycopg.Connection[Any], sql_file: SqlFile) -> None:
    if sql_file.autocommit:
        _run(conn, sql_file)
        return
    with conn.transaction():
        _lock(conn)
        _run(conn, sql_file)


def install(conn: psycopg.Connection[Any], sql_dir: Path = SQL_DIR) -> InstallReport:
    """Bring the observability schema up to date with sql/.

    Runs head.sql, then every incremental file not yet recorded (each in its own transaction,
    recording its name and sha256), then every idempotent file. Refuses to run if an applied
    incremental file has changed or disappeared.
    """
    layout = discover(sql_dir)
    report = InstallReport()

    def keep_warning(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized == "WARNING":
            report.warnings.append(diagnostic.message_primary or "")

    conn.add_notice_handler(keep_warning)
    try:
        _install(conn, layout, report)
    finally:
        conn.remove_notice_handler(keep_warning)
    return report


def _install(conn: psycopg.Connection[Any], layout: SqlLayout, report: InstallReport) -> None:
    with _autocommit(conn):
        with conn.transaction():
            _lock(conn)
            _run(conn, layout.head)
        applied = applied_migrations(conn)
        verify_applied(applied, layout)
        for sql_file in layout.incremental:
            if sql_file.name in applied:
                report.already_applied.append(sql_file.name)
            elif _apply_incremental(conn, sql_file):
                log.info("applied %s", sql_file.label)
                report.applied.append(sql_file.name)
            else:
                report.already_applied.append(sql_file.name)
        for sql_file in layout.idempotent:
            _apply_idempotent(conn, sql_file)
            log.debug("ran %s", sql_file.label)
            report.idempotent.append(sql_file.name)
        report.sketch_merge_language = sketch_merge_language(conn)


def uninstall(conn: psycopg.Connection[Any]) -> None:
    """Drop everything install() created except the extensions, which other schemas may use."""
    with _autocommit(conn), conn.transaction():
        _lock(conn)
        conn.execute(f"drop schema if exists {SCHEMA} cascade")
