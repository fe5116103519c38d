from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.factories import (
    create_completed_trace,
    create_document_event,
    create_failed_trace,
    create_llm_span,
    create_retrieval_span,
    create_trace,
)
from tests.rollup_oracle import (
    KEY,
    SOURCES,
    Source,
    from_raw,
    from_rollup,
    rolled_up_from_lower,
)
from tests.rollup_support import (
    Window,
    clean_window,
    close,
    insert_rows,
    keyed,
    monday_window,
    refresh_all,
    rollup_conn,
    sketch_schema,
)

__all__ = ["rollup_conn"]

WINDOW = monday_window(days_ago=20)
USERS = [UUID(int=i + 1) for i in range(5)]
KBS = [UUID(int=100 + i) for i in range(3)]
STEPS = ("upload", "parse", "chunk", "embed")


@pytest.fixture(scope="module")
def window(rollup_conn: psycopg.Connection) -> Iterator[Window]:
    clean_window(rollup_conn, WINDOW)
    yield WINDOW
    clean_window(rollup_conn, WINDOW)


def _moment(rng: random.Random, window: Window, days: tuple[float, float]) -> Any:
    return window.at(days=rng.uniform(*days))


def make_rows(rng: random.Random, window: Window, days: tuple[float, float], n: int) -> dict:
    """Traces, spans and document events over the given days of the window, with NULLs,
    errors, zeros and rows outside every dimension mixed in."""
    random.seed(rng.random())
    traces = []
    for _ in range(n):
        started = _moment(rng, window, days)
        common = {
            "started_at": started,
            "operation_type": rng.choice(("chat", "search", "generation")),
            "user_id": rng.choice([*USERS, None]),
            "kb_id": rng.choice([*KBS, None]),
        }
        kind = rng.random()
        if kind < 0.1:
            traces.append(create_trace(**common))  # still running: no duration, tokens or cost
        elif kind < 0.2:
            traces.append(create_failed_trace(**common, duration_ms=rng.randint(0, 30000)))
        else:
            traces.append(
                create_completed_trace(
                    **common,
                    duration_ms=int(rng.lognormvariate(7, 1)),
                    total_tokens=rng.choice([None, 0, rng.randint(1, 5000)]),
                    cost_usd=Decimal(rng.randint(0, 500000)) / 1_000_000,
                )
            )
    spans = []
    for _ in range(2 * n):
        started = _moment(rng, window, days)
        if rng.random() < 0.1:
            spans.append(create_retrieval_span(started_at=started))  # not an LLM span
            continue
        span = create_llm_span(
            started_at=started,
            model=rng.choice(("gpt-4", "gpt-3.5-turbo", "claude-3")),
            duration_ms=int(rng.lognormvariate(6.5, 0.8)),
            status=rng.choice(("ok", "ok", "ok", "error")),
            time_to_first_token_ms=rng.choice([None, rng.randint(0, 2000)]),
        )
        if rng.random() < 0.1:  # an LLM call the instrumentation could not name
            span |= {"model": None, "provider": None, "name": "chat"}
        spans.append(span)
    events = [
        create_document_event(
            created_at=_moment(rng, window, days),
            event_type=rng.choice(STEPS),
            status=rng.choice(("ok", "ok", "error", "running")),
            duration_ms=rng.choice([None, rng.randint(0, 120000)]),
        )
        for _ in range(n // 2)
    ]
    return {
        "observability.traces": traces,
        "observability.spans": spans,
        "observability.document_events": events,
    }


def insert_all(conn: psycopg.Connection, rows: dict) -> None:
    for table, table_rows in rows.items():
        insert_rows(conn, table, table_rows)


def compare_with_raw(conn: psycopg.Connection, source: Source, level: str, window: Window) -> list:
    """Differences between a rollup and its defining query over the raw rows."""
    expected = keyed(from_raw(conn, source, level, window), *KEY)
    actual = keyed(from_rollup(conn, source, level, window, sketch_schema(conn)), *KEY)
    problems: list[Any] = []
    if actual.keys() != expected.keys():
        return [("keys", sorted(actual.keys() ^ expected.keys(), key=str)[:5])]
    for key, want in expected.items():
        got = actual[key]
        for column, value in want.items():
            if column in KEY:
                continue
            if column.endswith("_percentiles"):
                pairs = zip(got[column] or [None] * 3, value or [None] * 3, strict=True)
                if not all(close(a, e) for a, e in pairs):
                    problems.append((key, column, got[column], value))
            elif got[column] != value:
                problems.append((key, column, got[column], value))
        for prefix in source.sketched:
            if level != "hourly":
                pairs = zip(
                    got[f"{prefix}_percentiles"] or [None] * 3,
                    got[f"{prefix}_from_sketch"] or [None] * 3,
                    strict=True,
                )
                if not all(close(a, e, rel=1e-12) for a, e in pairs):
                    problems.append(
                        (key, f"{prefix}_percentiles stored", got[f"{prefix}_percentiles"])
                    )
            count = want[f"{prefix}_count"]
            mean = float(want[f"{prefix}_sum"]) / count if count else None
            if not close(got[f"{prefix}_avg"], mean, rel=1e-9):
                problems.append((key, f"{prefix}_avg", got[f"{prefix}_avg"], mean))
    return problems


def compare_with_lower(
    conn: psycopg.Connection, source: Source, level: str, window: Window
) -> list:
    schema = sketch_schema(conn)
    expected = keyed(rolled_up_from_lower(conn, source, level, window, schema), *KEY)
    actual = keyed(from_rollup(conn, source, level, window, schema), *KEY)
    if actual.keys() != expected.keys():
        return [("keys", sorted(actual.keys() ^ expected.keys(), key=str)[:5])]
    problems = []
    for key, want in expected.items():
        for column, value in want.items():
            got = actual[key][column]
            if column.endswith("_percentiles"):
                pairs = zip(got or [None] * 3, value or [None] * 3, strict=True)
                if not all(close(a, e, rel=1e-9) for a, e in pairs):
                    problems.append((key, column, got, value))
            elif got != value:
                problems.append((key, column, got, value))
    return problems


LEVEL_CASES = [
    pytest.param(source, level, id=f"{source.name}_{level}")
    for source in SOURCES
    for level in ("hourly", "daily", "weekly")
]


@pytest.fixture(scope="module")
def refreshed(rollup_conn: psycopg.Connection, window: Window) -> Window:
    # Ten days from Monday: both weeks of the window, hours and days of every kind.
    insert_all(rollup_conn, make_rows(random.Random(7), window, (0, 10), n=240))
    refresh_all(rollup_conn, window)
    return window


@pytest.mark.parametrize(("source", "level"), LEVEL_CASES)
def test_rollup_equals_its_defining_query(
    rollup_conn: psycopg.Connection, refreshed: Window, source: Source, level: str
) -> None:
    assert from_rollup(rollup_conn, source, level, refreshed, sketch_schema(rollup_conn))
    assert compare_with_raw(rollup_conn, source, level, refreshed) == []


@pytest.mark.parametrize(
    ("source", "level"),
    [p for p in LEVEL_CASES if not p.id.endswith("hourly")],  # type: ignore[union-attr]
)
def test_rollup_equals_the_rollup_of_the_level_below(
    rollup_conn: psycopg.Connection, refreshed: Window, source: Source, level: str
) -> None:
    assert compare_with_lower(rollup_conn, source, level, refreshed) == []


def test_late_rows_are_picked_up_by_the_next_refresh(
    rollup_conn: psycopg.Connection, refreshed: Window
) -> None:
    # Late rows for buckets that are already materialized, including new dimension values.
    late = make_rows(random.Random(8), refreshed, (1, 1.2), n=30)
    late["observability.traces"].append(
        create_completed_trace(
            started_at=refreshed.at(days=8, hours=3),
            operation_type="late_operation",
            user_id=UUID(int=999),
            duration_ms=1234,
        )
    )
    insert_all(rollup_conn, late)
    traces = SOURCES[0]
    # Materialized buckets do not change by themselves: below the watermark, real-time
    # aggregation does not look at raw rows.
    assert compare_with_raw(rollup_conn, traces, "hourly", refreshed) != []
    refresh_all(rollup_conn, refreshed)
    for source in SOURCES:
        for level in ("hourly", "daily", "weekly"):
            assert compare_with_raw(rollup_conn, source, level, refreshed) == [], (
                source.name,
                level,
            )
            if level != "hourly":
                assert compare_with_lower(rollup_conn, source, level, refreshed) == []


def test_deleted_rows_leave_the_rollups_after_a_refresh(
    rollup_conn: psycopg.Connection, refreshed: Window
) -> None:
    rollup_conn.execute(
        "delete from observability.traces where started_at >= %s and started_at < %s",
        [refreshed.at(days=2), refreshed.at(days=3)],
    )
    refresh_all(rollup_conn, refreshed)
    rows = rollup_conn.execute(
        "select count(*) from observability.traces_daily where bucket = %s",
        [refreshed.at(days=2)],
    ).fetchone()
    assert rows == (0,)
    assert compare_with_raw(rollup_conn, SOURCES[0], "weekly", refreshed) == []
