from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.rollup_support import connect, insert_rows, rows_as_dicts

AGGREGATE_COLUMNS = (
    "bucket_time, granularity, metric_type, dimension_type, dimension_value, count, sum_value, "
    "min_value, max_value, avg_value, p50_value, p95_value, p99_value, created_at, updated_at"
)


def day_start(days_ago: int) -> datetime:
    """Midnight UTC days_ago days back: well inside raw retention, clear of today's policies."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago)


def place(rows: Sequence[dict[str, Any]], start: datetime, step: timedelta) -> list[dict[str, Any]]:
    """The rows moved to start, start + step, ...; ended_at follows started_at."""
    placed = []
    for i, row in enumerate(rows):
        moved = dict(row)
        moved["started_at"] = start + i * step
        if moved.get("duration_ms") is not None:
            moved["ended_at"] = moved["started_at"] + timedelta(milliseconds=moved["duration_ms"])
        placed.append(moved)
    return placed


def insert_traces(conn: psycopg.Connection[Any], rows: Sequence[dict[str, Any]]) -> None:
    insert_rows(conn, "observability.traces", rows)


def insert_spans(conn: psycopg.Connection[Any], rows: Sequence[dict[str, Any]]) -> None:
    insert_rows(conn, "observability.spans", rows)


def aggregates(conn: psycopg.Connection[Any], **where: Any) -> list[dict[str, Any]]:
    clauses = " and ".join(f"{column} = %({column})s" for column in where) or "true"
    cursor = conn.execute(
        f"select {AGGREGATE_COLUMNS} from observability.metrics_aggregates where {clauses} "
        "order by metric_type, granularity, dimension_type, dimension_value, bucket_time",
        where,
    )
    return rows_as_dicts(cursor)


def one(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def agg_conn(clean_observability: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the migrated database; tables emptied after the test."""
    with connect(clean_observability) as conn:
        yield conn
