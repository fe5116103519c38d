from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.aggregation_support import day_start, insert_traces, place
from tests.factories import create_traces_for_aggregation
from tests.fault_proxy import fault_proxy
from tests.rollup_support import rows_as_dicts
from worker.cli.status import render_liveness
from worker.monitoring import exporter as metrics_server
from worker.rollups import backfill_metrics
from worker.rollups import service as aggregation_service
from worker.rollups.leases import DatabaseUnresponsive, acquire
from worker.rollups.liveness import held_leases, running_runs
from worker.rollups.runs import ABANDONED_ERROR
from worker.settings import WorkerSettings

pytestmark = pytest.mark.faults

HOUR = timedelta(hours=1)


def _workload(conn: psycopg.Connection, start: datetime, hours: int, per_hour: int = 2) -> None:
    traces = create_traces_for_aggregation(count=hours * per_hour)
    insert_traces(conn, place(traces, start + timedelta(minutes=7), HOUR / per_hour))


def _runs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return rows_as_dicts(
        conn.execute(
            "select id, kind, status, done_until, error from observability.aggregation_runs"
            " order by id"
        )
    )


def _table_equals_view(conn: psycopg.Connection, start: datetime, end: datetime) -> bool:
    query = (
        "select count(*) from ((select bucket, metric_type, dimension_type, dimension_value,"
        " count, sum, min, max, avg, p50, p95, p99 from observability.metrics"
        " where granularity = 'hour' and bucket >= %(s)s and bucket < %(e)s"
        " except all select bucket_time, metric_type, dimension_type, dimension_value, count,"
        " sum_value, min_value, max_value, avg_value, p50_value, p95_value, p99_value"
        " from observability.metrics_aggregates where granularity = 'hour'"
        " and bucket_time >= %(s)s and bucket_time < %(e)s)"
        " union all (select bucket_time, metric_type, dimension_type, dimension_value, count,"
        " sum_value, min_value, max_value, avg_value, p50_value, p95_value, p99_value"
        " from observability.metrics_aggregates where granularity = 'hour'"
        " and bucket_time >= %(s)s and bucket_time < %(e)s"
        " except all select bucket, metric_type, dimension_type, dimension_value,"
        " count, sum, min, max, avg, p50, p95, p99 from observability.metrics"
        " where granularity = 'hour' and bucket >= %(s)s and bucket < %(e)s)) as d"
    )
    row = conn.execute(query, {"s": start, "e": end}).fetchone()
    synced = conn.execute(
        "select count(*) from observability.metrics_aggregates where granularity = 'hour'"
        " and bucket_time >= %s and bucket_time < %s",
        [start, end],
    ).fetchone()
    return row is not None and row[0] == 0 and synced is not None and synced[0] > 0


def test_database_lost_mid_run_records_its_own_error_once_back(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVABILITY_BATCH_BUCKETS", "6")
    monkeypatch.setenv("OBSERVABILITY_LEASE_TTL", "3")  # the lost run could not release it
    start = day_start(9)
    end = start + 24 * HOUR
    _workload(agg_conn, start, 24)
    with fault_proxy(agg_conn.info.dsn) as proxy:
        batches: list[Any] = []

        def stop_the_database(batch: Any, counts: Any) -> None:
            batches.append(batch)
            if len(batches) == 1:
                proxy.cut()

        with pytest.raises(psycopg.OperationalError):
            backfill_metrics(
                start,
                end,
                "hour",
                database_url=proxy.url,
                settings=WorkerSettings.from_env(),
                progress=stop_the_database,
            )
        # nothing could be written while the database was gone
        lost = _runs(agg_conn)[-1]
        assert lost["status"] == "running" and lost["done_until"] == start + 6 * HOUR

        proxy.heal()
        summary = backfill_metrics(
            start,
            end,
            "hour",
            database_url=proxy.url,
            settings=WorkerSettings.from_env(),
            resume=True,
            wait_seconds=30,
        )
    first, second = _runs(agg_conn)
    assert first["status"] == "failed"
    assert first["error"].startswith("OperationalError")
    assert "recorded once the database answered again" in first["error"]
    assert first["error"] != ABANDONED_ERROR and "stopped without finishing" not in first["error"]
    assert second["status"] == "succeeded"
    assert summary["resumed_from"] == (start + 6 * HOUR).isoformat()
    assert _table_equals_view(agg_conn, start, end)


def test_a_frozen_database_aborts_the_run_instead_of_hanging(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGSTOP of the server, as its clients see it: TCP stays up, nothing answers.
    monkeypatch.setenv("OBSERVABILITY_BATCH_BUCKETS", "6")
    monkeypatch.setenv("OBSERVABILITY_LEASE_TTL", "3")
    monkeypatch.setenv("OBSERVABILITY_DB_UNRESPONSIVE_TIMEOUT", "4")
    start = day_start(8)
    end = start + 24 * HOUR
    _workload(agg_conn, start, 24)
    outcome: dict[str, Any] = {}
    with fault_proxy(agg_conn.info.dsn) as proxy:

        def freeze(batch: Any, counts: Any) -> None:
            if "frozen_at" not in outcome:
                outcome["frozen_at"] = time.monotonic()
                proxy.freeze()

        def run() -> None:
            try:
                backfill_metrics(
                    start,
                    end,
                    "hour",
                    database_url=proxy.url,
                    settings=WorkerSettings.from_env(),
                    progress=freeze,
                )
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc
                outcome["failed_at"] = time.monotonic()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(120)
        assert not thread.is_alive(), "the run hung on the frozen database"
        error = outcome["error"]
        assert isinstance(error, DatabaseUnresponsive), repr(error)
        assert isinstance(error, psycopg.OperationalError)  # retried by the Celery task
        assert "did not answer for" in str(error)
        print(f"frozen database: run aborted {outcome['failed_at'] - outcome['frozen_at']:.1f} s")

        # a scrape meanwhile answers within its budget, saying the database is down
        collector = metrics_server.DatabaseHealthCollector(proxy.url, timeout=1.0)
        began = time.monotonic()
        families = {f.name: f for f in collector.collect()}
        took = time.monotonic() - began
        assert families["observability_database_up"].samples[0].value == 0
        assert took < 4, f"the scrape waited {took:.1f} s on a frozen database"

        proxy.heal()
        backfill_metrics(
            start,
            end,
            "hour",
            database_url=proxy.url,
            settings=WorkerSettings.from_env(),
            resume=True,
            wait_seconds=30,
        )
    failed, succeeded = _runs(agg_conn)
    assert failed["status"] == "failed" and "DatabaseUnresponsive" in failed["error"]
    assert succeeded["status"] == "succeeded"
    assert _table_equals_view(agg_conn, start, end)


def test_records_are_counted_as_each_batch_commits(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVABILITY_BATCH_BUCKETS", "6")
    start = day_start(10)
    end = start + 12 * HOUR
    _workload(agg_conn, start, 12)
    real_sync = aggregation_service.sync_window
    calls: list[Any] = []

    def killed_in_second_batch(conn: psycopg.Connection, batch: Any) -> Any:
        calls.append(batch)
        if len(calls) == 2:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_sync(conn, batch)

    def processed() -> float:
        value = REGISTRY.get_sample_value(
            "observability_aggregation_records_processed_total", {"granularity": "hour"}
        )
        return value or 0.0

    before = processed()
    monkeypatch.setattr(aggregation_service, "sync_window", killed_in_second_batch)
    with pytest.raises(psycopg.OperationalError):
        backfill_metrics(
            start, end, "hour", database_url=agg_conn.info.dsn, settings=WorkerSettings.from_env()
        )
    committed = agg_conn.execute(
        "select count(*) from observability.metrics_aggregates where granularity = 'hour'"
    ).fetchone()
    assert committed is not None and committed[0] > 0
    assert processed() - before == committed[0]


def test_last_success_is_seeded_when_the_database_comes_back(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = datetime(2026, 6, 1, 12, 34, 56, tzinfo=UTC)
    agg_conn.execute(
        "insert into observability.aggregation_runs (kind, granularity, range_start, range_end,"
        " done_until, status, started_at, finished_at) values ('scheduled', 'week', %(s)s,"
        " %(e)s, %(e)s, 'succeeded', %(f)s - interval '5 minutes', %(f)s)",
        {"s": finished - timedelta(days=14), "e": finished - timedelta(days=7), "f": finished},
    )
    monkeypatch.setattr(metrics_server, "_seeded_done", False)
    gauge = ("observability_aggregation_last_success", {"granularity": "week"})
    with fault_proxy(agg_conn.info.dsn) as proxy:
        proxy.cut()
        metrics_server.restore_last_successes(proxy.url)  # the worker starts: database down
        assert REGISTRY.get_sample_value(*gauge) != finished.timestamp()
        collector = metrics_server.DatabaseHealthCollector(proxy.url, timeout=10)
        down = {f.name: f for f in collector.collect()}
        assert down["observability_database_up"].samples[0].value == 0
        proxy.heal()
        up = {f.name: f for f in collector.collect()}
        assert up["observability_database_up"].samples[0].value == 1
    assert REGISTRY.get_sample_value(*gauge) == finished.timestamp()


def test_stuck_runs_and_held_leases_are_exported_and_shown(agg_conn: psycopg.Connection) -> None:
    agg_conn.execute(
        "insert into observability.aggregation_runs (kind, granularity, range_start, range_end,"
        " done_until, started_at) values ('backfill', 'day', now() - interval '3 days',"
        " now() - interval '1 day', now() - interval '3 days', now() - interval '2 hours')"
    )
    lease = acquire(agg_conn, "aggregation:hour", timedelta(minutes=1), task_id="task-7")
    try:
        agg_conn.execute(
            "insert into observability.aggregation_runs (kind, granularity, range_start,"
            " range_end, done_until) values ('scheduled', 'hour', now() - interval '2 hours',"
            " now() - interval '1 hour', now() - interval '2 hours')"
        )
        registry = metrics_server.build_registry(agg_conn.info.dsn, health_timeout=30)
        text = generate_latest(registry).decode()
        status = render_liveness(running_runs(agg_conn), held_leases(agg_conn))
    finally:
        lease.release()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("observability_aggregation_stuck_runs", granularity="day") == 1
    assert value("observability_aggregation_stuck_runs", granularity="hour") == 0
    assert value("observability_aggregation_running_runs", granularity="hour") == 1
    oldest = value("observability_aggregation_oldest_running_run_seconds", granularity="day")
    assert oldest is not None and 7000 < oldest < 7400
    assert value("observability_worker_lease_held", lease="aggregation:hour") == 1
    assert value("observability_worker_lease_held", lease="aggregation:day") == 0
    assert value("observability_worker_lease_held_seconds", lease="aggregation:hour") is not None
    assert value("observability_worker_lease_held_seconds", lease="aggregation:day") is None
    shown = "\n".join(status)
    assert "1 day run marked running with no worker holding its lease" in shown
    assert "aggregation:hour" in shown and "task-7" in shown


def test_worker_sessions_carry_a_statement_timeout_and_keepalives(
    agg_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.rollups.connections import connect

    with connect(agg_conn.info.dsn, statement_timeout=7) as conn:
        row = conn.execute("show statement_timeout").fetchone()
        dsn = conn.info.dsn
    assert row == ("7s",)
    # client-side: libpq applies them to the socket
    assert "keepalives_idle=30" in dsn and "connect_timeout=10" in dsn
    # the run's sessions get the configured limit
    monkeypatch.setenv("OBSERVABILITY_STATEMENT_TIMEOUT", "11")
    seen: list[Any] = []
    real_refresh = aggregation_service.refresh_rollups

    def refresh(conn: psycopg.Connection, batch: Any, **options: Any) -> None:
        seen.append(conn.execute("show statement_timeout").fetchone())
        real_refresh(conn, batch, **options)

    monkeypatch.setattr(aggregation_service, "refresh_rollups", refresh)
    start = day_start(5)
    backfill_metrics(
        start,
        start + HOUR,
        "hour",
        database_url=agg_conn.info.dsn,
        settings=WorkerSettings.from_env(),
    )
    assert seen == [("11s",)]
