from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from worker.schema.migrate import CONNECT_ARGS
from worker.schema.sqltemplate import recorded_sketch

RAW_TABLES = {
    "traces": ("observability.traces", "started_at"),
    "spans": ("observability.spans", "started_at"),
    "document_events": ("observability.document_events", "created_at"),
}
LEVELS = (("hourly", timedelta(hours=1)), ("daily", timedelta(days=1)), ("weekly", None))
ROLLUPS = tuple(
    f"observability.{source}_{level}"
    for source in ("traces", "llm_spans", "document_events")
    for level, _ in LEVELS
)


@dataclass(frozen=True)
class Window:
    """A stretch of time a test module owns: whole weeks, Monday 00:00 UTC to Monday."""

    start: datetime
    end: datetime

    def at(self, days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
        return self.start + timedelta(days=days, hours=hours, minutes=minutes)


def monday_window(days_ago: int, weeks: int = 2) -> Window:
    """Whole weeks starting on the Monday at or before now - days_ago (UTC).

    Tests put their rows far enough back that the hourly policy ([now - 3 days, now]) never
    touches them, and well inside the 30-day raw retention.
    """
    day = (datetime.now(UTC) - timedelta(days=days_ago)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    monday = day - timedelta(days=day.weekday())
    return Window(monday, monday + timedelta(weeks=weeks))


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, **CONNECT_ARGS)


def sketch_schema(conn: psycopg.Connection[Any]) -> str:
    recorded = recorded_sketch(conn)
    assert recorded is not None, "the percentile sketch was not recorded at install"
    return recorded[1]


def refresh(conn: psycopg.Connection[Any], rollup: str, window: Window) -> None:
    # On a server, a policy refreshing the same rollup at that moment makes this fail with
    # 55P03 ("due to a concurrent refresh"): try again, as the error says.
    for attempt in range(20):
        try:
            conn.execute(
                "call public.refresh_continuous_aggregate(%s::regclass, %s, %s)",
                [rollup, window.start, window.end],
            )
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == 19:
                raise
            time.sleep(0.5)


def refresh_all(conn: psycopg.Connection[Any], window: Window) -> None:
    """Hourly, then daily, then weekly, as the policies would, over the window."""
    for level, _ in LEVELS:
        for source in ("traces", "llm_spans", "document_events"):
            refresh(conn, f"observability.{source}_{level}", window)


def insert_rows(conn: psycopg.Connection[Any], table: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    statement = (
        f"insert into {table} ({', '.join(columns)}) "
        f"values ({', '.join(f'%({c})s' for c in columns)})"
    )
    prepared = [
        {k: Jsonb(v) if isinstance(v, dict | list) else v for k, v in row.items()} for row in rows
    ]
    with conn.cursor() as cursor:
        cursor.executemany(statement, prepared)


def delete_window(conn: psycopg.Connection[Any], window: Window) -> None:
    for table, column in RAW_TABLES.values():
        conn.execute(
            f"delete from {table} where {column} >= %s and {column} < %s",
            [window.start, window.end],
        )


@pytest.fixture(scope="module")
def rollup_conn(migrated_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(migrated_database_url) as conn:
        yield conn


def clean_window(conn: psycopg.Connection[Any], window: Window) -> None:
    """No raw rows and no rolled-up rows left in the window."""
    delete_window(conn, window)
    refresh_all(conn, window)


def rows_as_dicts(cursor: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    names = [d.name for d in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def close(actual: float | None, expected: float | None, rel: float = 0.01) -> bool:
    """Within rel of expected (relative error), NULL only where expected is NULL."""
    if expected is None or actual is None:
        return actual is None and expected is None
    if expected == 0:
        return abs(actual) <= 1e-12
    return abs(actual - expected) <= rel * abs(expected)


def wait_for(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def keyed(rows: Iterable[dict[str, Any]], *key: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(row[k] for k in key): row for row in rows}
