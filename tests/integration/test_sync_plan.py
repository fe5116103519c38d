from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.aggregation_support import aggregates, day_start, insert_traces, place
from tests.factories import create_traces_for_aggregation
from worker.rollups import aggregate_observability_metrics
from worker.rollups.sync import _SYNC, sync_window
from worker.rollups.windows import Window

HOUR = timedelta(hours=1)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _subplan(plan: dict[str, Any], name: str) -> dict[str, Any]:
    for node in _nodes(plan):
        if node.get("Subplan Name") == name:
            return node
    raise AssertionError(f"no subplan {name!r} in the plan")


def _sync_plan(conn: psycopg.Connection[Any], window: Window) -> dict[str, Any]:
    params = {"granularity": window.granularity, "start": window.start, "end": window.end}
    row = conn.execute("explain (format json) " + _SYNC, params).fetchone()
    assert row is not None
    return row[0][0]["Plan"]


def _window_chunks(conn: psycopg.Connection[Any], window: Window) -> set[str]:
    rows = conn.execute(
        "select chunk_name from timescaledb_information.chunks"
        " where hypertable_schema = 'observability' and hypertable_name = 'metrics_aggregates'"
        " and range_end > %s and range_start < %s",
        [window.start, window.end],
    ).fetchall()
    return {row[0] for row in rows}


def _check_linear(plan: dict[str, Any], window_chunks: set[str]) -> None:
    """No plan shape whose cost is the window's rows times the source's (or the rows to
    delete): the rows to delete come from a set operation, and no nested loop repeats a scan
    of a CTE, of a materialized row set or of a chunk holding the window's rows for every outer
    row. A sequential scan of another chunk may sit on the inner side: the planner takes a
    chunk's size from its current pages, with or without statistics, so it picks that only for
    an (almost) empty chunk, such as one whose rows an earlier test removed."""
    gone = _subplan(plan, "CTE gone")
    assert any(n["Node Type"] == "SetOp" for n in _nodes(gone)), gone
    assert not any("Anti" in n.get("Join Type", "") for n in _nodes(plan))
    deleted = _subplan(plan, "CTE deleted")
    for node in _nodes(deleted):
        if node["Node Type"] == "Nested Loop":
            inner = next(c for c in node["Plans"] if c["Parent Relationship"] == "Inner")
            kinds = {n["Node Type"] for n in _nodes(inner)}
            assert not kinds & {"CTE Scan", "Materialize"}, node
            scanned = {
                n.get("Relation Name") for n in _nodes(inner) if n["Node Type"] == "Seq Scan"
            }
            assert not scanned & window_chunks, node


@pytest.fixture
def synced_hours(agg_conn: psycopg.Connection[Any]) -> Window:
    start = day_start(5) + 6 * HOUR
    for hour in range(3):
        rows = create_traces_for_aggregation(count=6, operation_type="chat")
        insert_traces(agg_conn, place(rows, start + hour * HOUR, HOUR / 6))
    aggregate_observability_metrics("hour", start, start + 3 * HOUR, database_url=agg_conn.info.dsn)
    return Window("hour", start, start + 3 * HOUR)


def _fill_window_chunks(conn: psycopg.Connection[Any], window: Window, rows: int) -> set[str]:
    """Rows of another granularity in the window's chunks, as a bulk load leaves them: a scan
    of such a chunk for every row to delete is the cost the sync must not have. (With only a
    few synced rows the chunk is a page or two, and a sequential scan of it is as good a plan
    as any, so a plan check there would depend on the planner's tie-breaks.) Returns the names
    of the chunks that took the rows."""
    day = window.start.replace(hour=0, minute=0, second=0, microsecond=0)
    conn.execute(
        "insert into observability.metrics_aggregates"
        " (bucket_time, granularity, metric_type, dimension_type, dimension_value, count)"
        " select %s, 'day', 'trace.count', 'user', 'bulk-user-' || i, 1"
        " from pg_catalog.generate_series(1, %s) as i",
        [day, rows],
    )
    counts = conn.execute(
        "select a.tableoid::regclass::text, pg_catalog.count(*)"
        " from observability.metrics_aggregates as a"
        " where a.granularity = 'day' and a.bucket_time = %s group by 1",
        [day],
    ).fetchall()
    assert sum(count for _, count in counts) == rows
    return {name.rsplit(".", 1)[-1] for name, _ in counts}


def test_the_sync_plan_does_not_depend_on_statistics(
    agg_conn: psycopg.Connection[Any], synced_hours: Window
) -> None:
    window_chunks = _window_chunks(agg_conn, synced_hours)
    filled = _fill_window_chunks(agg_conn, synced_hours, rows=20_000)
    # the day rows went into the window's chunks, not into a chunk of their own
    assert filled and filled <= window_chunks
    # as right after a bulk load: the synced rows' chunks were never analysed
    analysed = agg_conn.execute(
        "select pg_catalog.count(*) from pg_catalog.pg_stats"
        " where schemaname = '_timescaledb_internal' and attname = 'dimension_value'"
        " and tablename in (select chunk_name from timescaledb_information.chunks"
        "   where hypertable_name = 'metrics_aggregates')"
    ).fetchone()
    assert analysed is not None and analysed[0] == 0
    assert window_chunks
    _check_linear(_sync_plan(agg_conn, synced_hours), window_chunks)
    agg_conn.execute("analyze observability.metrics_aggregates")
    _check_linear(_sync_plan(agg_conn, synced_hours), window_chunks)


def test_a_resync_deletes_exactly_the_rows_whose_source_is_gone(
    agg_conn: psycopg.Connection[Any], synced_hours: Window
) -> None:
    url = agg_conn.info.dsn
    window = (synced_hours.start, synced_hours.end)
    before = aggregates(agg_conn, granularity="hour")
    unchanged = sync_window(agg_conn, synced_hours)
    assert (unchanged.created, unchanged.updated, unchanged.deleted) == (0, 0, 0)
    middle = synced_hours.start + HOUR
    agg_conn.execute(
        "delete from observability.traces where started_at >= %s and started_at < %s",
        [middle, middle + HOUR],
    )
    summary = aggregate_observability_metrics("hour", *window, database_url=url)
    after = aggregates(agg_conn, granularity="hour")
    gone = [r for r in before if r["bucket_time"] == middle]
    assert gone
    assert (summary["metrics_created"], summary["metrics_updated"]) == (0, 0)
    assert summary["metrics_deleted"] == len(gone)
    assert after == [r for r in before if r["bucket_time"] != middle]
