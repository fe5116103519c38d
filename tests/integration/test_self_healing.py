from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from tests.aggregation_support import day_start, insert_traces, place
from tests.factories import create_traces_for_aggregation
from tests.integration.test_database_faults import _table_equals_view
from tests.rollup_support import rows_as_dicts
from worker.rollups import (
    InvalidWindow,
    WindowInFuture,
    aggregate_observability_metrics,
    backfill_metrics,
    outcomes,
)
from worker.rollups import service as aggregation_service
from worker.rollups.runs import ABANDONED_ERROR
from worker.scheduling.app import app as celery_app
from worker.scheduling.tasks import AGGREGATE_TASK
from worker.settings import WorkerSettings

aggregate_task = celery_app.tasks[AGGREGATE_TASK]

pytestmark = pytest.mark.faults

HOUR = timedelta(hours=1)


def _runs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return rows_as_dicts(
        conn.execute(
            "select id, kind, status, range_start, range_end, done_until, error"
            " from observability.aggregation_runs order by id"
        )
    )


def _fail_second_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sync = aggregation_service.sync_window
    calls: list[Any] = []

    def sync(conn: psycopg.Connection, batch: Any) -> Any:
        calls.append(batch)
        if len(calls) == 2:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_sync(conn, batch)

    monkeypatch.setattr(aggregation_service, "sync_window", sync)


def test_the_next_scheduled_run_resumes_a_backfill_whose_worker_died(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVABILITY_BATCH_BUCKETS", "6")
    start = day_start(6)
    end = start + 24 * HOUR
    insert_traces(
        agg_conn, place(create_traces_for_aggregation(count=48), start + HOUR / 4, HOUR / 2)
    )
    url = agg_conn.info.dsn
    # A worker killed mid-backfill records nothing: its run stays 'running' and its task never
    # comes back (sent from the command line, or lost with the broker).
    _fail_second_batch(monkeypatch)
    monkeypatch.setattr(aggregation_service, "_record_failure", lambda *args: None)
    with pytest.raises(psycopg.OperationalError):
        backfill_metrics(start, end, "hour", database_url=url, settings=WorkerSettings.from_env())
    monkeypatch.undo()
    monkeypatch.setenv("OBSERVABILITY_BATCH_BUCKETS", "6")
    assert _runs(agg_conn)[-1]["status"] == "running"

    summary = aggregate_observability_metrics(
        "hour", database_url=url, settings=WorkerSettings.from_env()
    )
    (resumed,) = summary["resumed_backfills"]
    assert resumed["resumed_from"] == (start + 6 * HOUR).isoformat()
    assert resumed["buckets"] == 18
    killed, scheduled, finished = _runs(agg_conn)
    assert (killed["status"], killed["error"]) == ("interrupted", ABANDONED_ERROR)
    assert scheduled["status"] == "succeeded" and scheduled["range_end"] > end
    assert finished["status"] == "succeeded" and finished["range_start"] == start
    assert _table_equals_view(agg_conn, start, end)
    # once finished, nothing is left to resume
    again = aggregate_observability_metrics(
        "hour", database_url=url, settings=WorkerSettings.from_env()
    )
    assert again["resumed_backfills"] == []


def test_a_scheduled_run_stopped_midway_is_resumed_where_it_stopped(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVABILITY_BATCH_BUCKETS", "6")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    last_end = now - 30 * HOUR
    agg_conn.execute(
        "insert into observability.aggregation_runs (kind, granularity, range_start, range_end,"
        " done_until, status, finished_at) values ('scheduled', 'hour', %s, %s, %s, 'succeeded',"
        " now())",
        [last_end - 2 * HOUR, last_end, last_end],
    )
    url = agg_conn.info.dsn
    _fail_second_batch(monkeypatch)  # e.g. its time limit stopped it
    with pytest.raises(psycopg.OperationalError):
        aggregate_observability_metrics(
            "hour", database_url=url, settings=WorkerSettings.from_env()
        )
    monkeypatch.undo()
    summary = aggregate_observability_metrics(
        "hour", database_url=url, settings=WorkerSettings.from_env()
    )
    assert summary["window"]["start"] == (last_end + 6 * HOUR).isoformat()


def test_an_unknown_granularity_is_counted_as_a_bad_request(celery_broker: str) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    bad = "observability_aggregation_bad_requests_total"
    failures = "observability_aggregation_task_failures_total"
    before = {
        "unknown": value(bad, reason="unknown_granularity"),
        "future": value(bad, reason="future_window"),
        "failed": {g: value(failures, granularity=g) for g in ("hour", "day", "week")},
    }
    result = aggregate_task.apply(args=("minute",))
    assert isinstance(result.result, InvalidWindow)
    assert "unknown granularity 'minute'" in str(result.result)
    assert value(bad, reason="unknown_granularity") == before["unknown"] + 1
    assert {g: value(failures, granularity=g) for g in before["failed"]} == before["failed"]

    ahead = (datetime.now(UTC) + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    window = (ahead.isoformat(), (ahead + HOUR).isoformat())
    refused = aggregate_task.apply(args=("hour", *window))
    assert isinstance(refused.result, WindowInFuture)
    assert value(bad, reason="future_window") == before["future"] + 1
    assert value(failures, granularity="hour") == before["failed"]["hour"] + 1


def test_failures_remembered_while_the_database_was_gone_are_written_once(
    agg_conn: psycopg.Connection,
) -> None:
    row = agg_conn.execute(
        "insert into observability.aggregation_runs (kind, granularity, range_start, range_end,"
        " done_until) values ('backfill', 'day', now() - interval '3 days',"
        " now() - interval '1 day', now() - interval '3 days') returning id"
    ).fetchone()
    assert row is not None
    outcomes.remember(row[0], "OperationalError: connection refused")
    outcomes.record_unrecorded(agg_conn)
    outcomes.record_unrecorded(agg_conn)  # already written: nothing left to write
    (run,) = _runs(agg_conn)
    assert run["status"] == "failed"
    assert run["error"] == (
        "OperationalError: connection refused (recorded once the database answered again)"
    )
