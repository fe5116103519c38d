from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.factories import create_completed_trace
from tests.rollup_support import (
    ROLLUPS,
    Window,
    insert_rows,
    refresh,
    rollup_conn,
    wait_for,
)
from worker.schema.install import install

__all__ = ["rollup_conn"]

WIDTHS = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1)}
# rollup level -> (start_offset, end_offset, schedule_interval), as sql/idempotent/004 sets them
WINDOWS = {
    "hourly": (timedelta(days=3), timedelta(0), timedelta(minutes=5)),
    "daily": (timedelta(days=5), timedelta(hours=1), timedelta(hours=1)),
    "weekly": (timedelta(weeks=3), timedelta(days=1), timedelta(hours=6)),
}
RAW = ("traces", "spans", "span_events", "document_events")
JOB_TIMEOUT = 90.0


def jobs(conn: psycopg.Connection, proc: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "select j.hypertable_name, j.job_id, j.schedule_interval, j.config, j.scheduled"
        " from timescaledb_information.jobs as j"
        " where j.proc_name = %s and j.hypertable_schema = 'observability'",
        [proc],
    ).fetchall()
    return {
        name: {"id": job_id, "schedule": schedule, "config": config, "scheduled": scheduled}
        for name, job_id, schedule, config, scheduled in rows
    }


def interval(conn: psycopg.Connection, text: str) -> timedelta:
    row = conn.execute("select %s::interval", [text]).fetchone()
    assert row is not None
    return row[0]


def test_every_rollup_has_its_refresh_policy(rollup_conn: psycopg.Connection) -> None:
    policies = jobs(rollup_conn, "policy_refresh_continuous_aggregate")
    assert {f"observability.{name}" for name in policies} == set(ROLLUPS)
    for name, job in policies.items():
        level = name.rpartition("_")[2]
        start, end, schedule = WINDOWS[level]
        config = job["config"]
        assert interval(rollup_conn, config["start_offset"]) == start, name
        assert interval(rollup_conn, config["end_offset"]) == end, name
        assert job["schedule"] == schedule and job["scheduled"], name
        # A policy window must hold at least two whole buckets.
        assert start - end >= 2 * WIDTHS[level], name


def test_the_hourly_level_stays_within_one_bucket(rollup_conn: psycopg.Connection) -> None:
    start, end, schedule = WINDOWS["hourly"]
    assert end + schedule < WIDTHS["hourly"]


def test_upper_windows_cover_what_the_level_below_can_change() -> None:
    # A late row changes buckets up to start_offset back; the next level must refresh every
    # bucket that contains such a time, the one the window starts in included.
    for lower, upper in (("hourly", "daily"), ("daily", "weekly")):
        assert WINDOWS[upper][0] >= WINDOWS[lower][0] + WIDTHS[upper]


def test_raw_tables_have_retention_and_compression(rollup_conn: psycopg.Connection) -> None:
    retention = jobs(rollup_conn, "policy_retention")
    compression = jobs(rollup_conn, "policy_compression")
    assert set(retention) == set(compression) == set(RAW)
    longest_window = max(start for start, _, _ in WINDOWS.values())
    for table in RAW:
        drop_after = interval(rollup_conn, retention[table]["config"]["drop_after"])
        compress_after = interval(rollup_conn, compression[table]["config"]["compress_after"])
        assert (drop_after, compress_after) == (timedelta(days=30), timedelta(days=2))
        # No refresh window reaches the retention horizon.
        assert longest_window < drop_after
    real_time = rollup_conn.execute(
        "select pg_catalog.bool_and(not materialized_only)"
        " from timescaledb_information.continuous_aggregates where view_schema = 'observability'"
    ).fetchone()
    assert real_time == (True,)


def test_retention_and_compression_can_be_configured(
    rollup_conn: psycopg.Connection, migrated_database_url: str
) -> None:
    before = jobs(rollup_conn, "policy_retention")
    with pytest.raises(psycopg.errors.RaiseException, match="too short"):
        rollup_conn.execute("select observability.apply_raw_data_policies(interval '3 days')")
    with pytest.raises(psycopg.errors.RaiseException, match="less than the retention"):
        rollup_conn.execute(
            "select observability.apply_raw_data_policies(null, interval '30 days')"
        )
    try:
        rollup_conn.execute(
            "select observability.apply_raw_data_policies(interval '90 days', interval '3 days')"
        )
        # A new install keeps what was configured, and the jobs stay the same jobs.
        install(rollup_conn)
        after = jobs(rollup_conn, "policy_retention")
        compression = jobs(rollup_conn, "policy_compression")
        assert {t: j["id"] for t, j in after.items()} == {t: j["id"] for t, j in before.items()}
        assert {interval(rollup_conn, j["config"]["drop_after"]) for j in after.values()} == {
            timedelta(days=90)
        }
        assert {
            interval(rollup_conn, j["config"]["compress_after"]) for j in compression.values()
        } == {timedelta(days=3)}
    finally:
        rollup_conn.execute(
            "select observability.apply_raw_data_policies(interval '30 days', interval '2 days')"
        )


def test_span_events_added_later_take_the_policies_of_spans(
    rollup_conn: psycopg.Connection,
) -> None:
    """An install that already has configured policies on spans, upgraded to a version with
    span_events: the new table gets the same ages, not the defaults."""
    try:
        rollup_conn.execute(
            "select observability.apply_raw_data_policies(interval '90 days', interval '3 days')"
        )
        rollup_conn.execute("select public.remove_retention_policy('observability.span_events')")
        rollup_conn.execute("select public.remove_compression_policy('observability.span_events')")
        install(rollup_conn)
        retention = jobs(rollup_conn, "policy_retention")["span_events"]
        compression = jobs(rollup_conn, "policy_compression")["span_events"]
        assert interval(rollup_conn, retention["config"]["drop_after"]) == timedelta(days=90)
        assert interval(rollup_conn, compression["config"]["compress_after"]) == timedelta(days=3)
    finally:
        rollup_conn.execute(
            "select observability.apply_raw_data_policies(interval '30 days', interval '2 days')"
        )


def test_install_restores_a_changed_refresh_policy_in_place(
    rollup_conn: psycopg.Connection,
) -> None:
    job = jobs(rollup_conn, "policy_refresh_continuous_aggregate")["traces_daily"]
    rollup_conn.execute(
        "select public.alter_job(%s, schedule_interval => interval '1 day',"
        ' config => %s::jsonb || \'{"start_offset": "9 days"}\')',
        [job["id"], Jsonb(job["config"])],
    )
    install(rollup_conn)
    after = jobs(rollup_conn, "policy_refresh_continuous_aggregate")["traces_daily"]
    assert after["id"] == job["id"]
    assert interval(rollup_conn, after["config"]["start_offset"]) == WINDOWS["daily"][0]
    assert after["schedule"] == WINDOWS["daily"][2]


def _job_successes(conn: psycopg.Connection, job_id: int) -> int:
    row = conn.execute(
        "select coalesce(total_successes, 0) from timescaledb_information.job_stats"
        " where job_id = %s",
        [job_id],
    ).fetchone()
    return int(row[0]) if row else 0


def _materialized(conn: psycopg.Connection, rollup: str, bucket: datetime, value: str) -> int:
    """Rows in the rollup's materialization table itself, whatever real-time would add."""
    row = conn.execute(
        "select c.materialization_hypertable_schema, c.materialization_hypertable_name"
        " from timescaledb_information.continuous_aggregates as c"
        " where c.view_schema = 'observability' and c.view_name = %s",
        [rollup],
    ).fetchone()
    assert row is not None
    found = conn.execute(
        sql.SQL(
            "select coalesce(pg_catalog.sum(trace_count), 0) from {}"
            " where bucket = %s and dimension_value = %s"
        ).format(sql.Identifier(*row)),
        [bucket, value],
    ).fetchone()
    assert found is not None
    return int(found[0])


def _run_now(conn: psycopg.Connection, job_id: int) -> int:
    """Make a job due now; the embedded engine's runner (or a server's scheduler) runs it."""
    successes = _job_successes(conn, job_id)
    conn.execute("select public.alter_job(%s, next_start => pg_catalog.now())", [job_id])
    return successes


def test_the_job_runner_applies_the_hourly_policy(rollup_conn: psycopg.Connection) -> None:
    now = rollup_conn.execute("select pg_catalog.now()").fetchone()[0]  # type: ignore[index]
    bucket = (now - timedelta(hours=26)).replace(minute=0, second=0, microsecond=0)
    day = Window(bucket.replace(hour=0), bucket.replace(hour=0) + timedelta(days=1))
    traces = [
        create_completed_trace(started_at=bucket + timedelta(minutes=m), operation_type="probe")
        for m in (1, 20, 40)
    ]
    insert_rows(rollup_conn, "observability.traces", traces)
    try:
        assert _materialized(rollup_conn, "traces_hourly", bucket, "probe") == 0
        job_id = jobs(rollup_conn, "policy_refresh_continuous_aggregate")["traces_hourly"]["id"]
        before = _run_now(rollup_conn, job_id)
        assert wait_for(
            lambda: _materialized(rollup_conn, "traces_hourly", bucket, "probe") == 3,
            timeout=JOB_TIMEOUT,
        ), "the hourly refresh policy did not run"
        assert wait_for(lambda: _job_successes(rollup_conn, job_id) > before, timeout=10)
        status = rollup_conn.execute(
            "select last_run_status from timescaledb_information.job_stats where job_id = %s",
            [job_id],
        ).fetchone()
        assert status == ("Success",)
    finally:
        rollup_conn.execute(
            "delete from observability.traces where operation_type = 'probe'"
            " and started_at >= %s and started_at < %s",
            [day.start, day.end],
        )
        refresh(rollup_conn, "observability.traces_hourly", day)
        refresh(rollup_conn, "observability.traces_daily", day)


def test_retention_drops_raw_rows_and_keeps_the_rollups(rollup_conn: psycopg.Connection) -> None:
    now = rollup_conn.execute("select pg_catalog.now()").fetchone()[0]  # type: ignore[index]
    bucket = (now - timedelta(days=40)).replace(minute=0, second=0, microsecond=0)
    day = Window(bucket.replace(hour=0), bucket.replace(hour=0) + timedelta(days=1))
    trace = create_completed_trace(started_at=bucket, operation_type="retained")
    insert_rows(rollup_conn, "observability.traces", [trace])
    try:
        refresh(rollup_conn, "observability.traces_hourly", day)
        assert _materialized(rollup_conn, "traces_hourly", bucket, "retained") == 1
        job_id = jobs(rollup_conn, "policy_retention")["traces"]["id"]
        before = _run_now(rollup_conn, job_id)
        assert wait_for(lambda: _job_successes(rollup_conn, job_id) > before, JOB_TIMEOUT)
        gone = rollup_conn.execute(
            "select count(*) from observability.traces where trace_id = %s", [trace["trace_id"]]
        ).fetchone()
        assert gone == (0,)
        assert _materialized(rollup_conn, "traces_hourly", bucket, "retained") == 1
    finally:
        rollup_conn.execute(
            "delete from observability.traces where trace_id = %s", [trace["trace_id"]]
        )
        # Refreshing over data that retention dropped deletes the rolled-up rows: exactly why
        # no policy window reaches that far. Here it is the clean-up.
        refresh(rollup_conn, "observability.traces_hourly", day)
