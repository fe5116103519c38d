from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from worker.embedded.engine import EmbeddedEngine, preflight

# These tests start engines of their own: they are about the embedded engine's process.

SCHEMA = """
create table metrics (time timestamptz not null, device int not null, value float8);
select create_hypertable('metrics', by_range('time', interval '1 day'));
insert into metrics
  select t, (extract(epoch from t)::bigint % 5)::int, extract(epoch from t)::bigint % 100
  from generate_series('2026-01-01'::timestamptz, '2026-01-04'::timestamptz - interval '1 minute',
                       interval '1 minute') t;
alter table metrics set (timescaledb.compress, timescaledb.compress_segmentby = 'device');
"""


def connect(engine: EmbeddedEngine) -> psycopg.Connection:
    return psycopg.connect(engine.url, autocommit=True)


def wait_until(predicate, timeout: float, every: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def test_restart_finds_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedEngine(data_dir) as engine, connect(engine) as c:
        c.execute(SCHEMA)
        compressed = c.execute(
            "select count(*) from (select compress_chunk(ch) from show_chunks('metrics') ch) x"
        ).fetchone()[0]
        assert compressed == 3
        c.execute(
            "create materialized view metrics_hourly with (timescaledb.continuous) as"
            " select time_bucket('1 hour', time) as bucket, device, count(*) as n, avg(value)"
            " from metrics group by 1, 2 with no data"
        )
        c.execute("call refresh_continuous_aggregate('metrics_hourly', null, null)")
        c.execute(
            "select add_continuous_aggregate_policy('metrics_hourly', interval '30 days',"
            " interval '1 hour', interval '1 hour')"
        )
        before = c.execute(
            "select (select count(*) from metrics), (select sum(value) from metrics),"
            " (select sum(n) from metrics_hourly)"
        ).fetchone()
        process = engine.process
    assert process is not None and process.returncode == 0

    with EmbeddedEngine(data_dir) as engine, connect(engine) as c:
        after = c.execute(
            "select (select count(*) from metrics), (select sum(value) from metrics),"
            " (select sum(n) from metrics_hourly)"
        ).fetchone()
        assert after == before
        assert after[0] == 3 * 24 * 60
        still_compressed = c.execute(
            "select count(*) from timescaledb_information.chunks"
            " where hypertable_name = 'metrics' and is_compressed"
        ).fetchone()[0]
        assert still_compressed == 3
        policies = c.execute(
            "select schedule_interval from timescaledb_information.jobs"
            " where proc_name = 'policy_refresh_continuous_aggregate'"
        ).fetchall()
        assert [p[0].total_seconds() for p in policies] == [3600]
        c.execute("insert into metrics values ('2026-01-05', 1, 1.5)")
        assert c.execute("select count(*) from metrics").fetchone()[0] == after[0] + 1


def test_job_runner_refreshes_on_schedule(tmp_path: Path) -> None:
    with (
        EmbeddedEngine(log_path=tmp_path / "engine.log", extra_args=["--job-poll-ms", "200"]) as e,
        connect(e) as c,
    ):
        c.execute(SCHEMA)
        c.execute("insert into metrics select now() - interval '2 hours', 1, 42")
        c.execute(
            "create materialized view recent with (timescaledb.continuous) as"
            " select time_bucket('1 hour', time) as bucket, count(*) as n"
            " from metrics group by 1 with no data"
        )
        job_id = c.execute(
            "select add_continuous_aggregate_policy('recent', interval '400 days',"
            " interval '1 hour', interval '2 seconds')"
        ).fetchone()[0]
        # Nobody calls refresh: the engine's job runner must do it.
        assert wait_until(
            lambda: c.execute("select coalesce(sum(n), 0) from recent").fetchone()[0] > 0, 30
        )
        assert wait_until(
            lambda: (
                c.execute(
                    "select total_runs from timescaledb_information.job_stats where job_id = %s",
                    (job_id,),
                ).fetchone()[0]
                >= 2
            ),
            30,
        )
        status, next_start, last_start = c.execute(
            "select last_run_status, next_start, last_run_started_at"
            " from timescaledb_information.job_stats where job_id = %s",
            (job_id,),
        ).fetchone()
        assert status == "Success"
        assert next_start > last_start
        history = c.execute(
            "select count(*), bool_and(succeeded) from timescaledb_information.job_history"
            " where job_id = %s",
            (job_id,),
        ).fetchone()
        assert history[0] >= 2 and history[1] is True


def test_job_runner_records_failures(tmp_path: Path) -> None:
    with (
        EmbeddedEngine(log_path=tmp_path / "engine.log", extra_args=["--job-poll-ms", "200"]) as e,
        connect(e) as c,
    ):
        c.execute(
            "create procedure public.always_fails(job_id int, config jsonb) language plpgsql as"
            " $$ begin raise exception 'broken job %', job_id; end $$"
        )
        job_id = c.execute("select add_job('public.always_fails', interval '1 hour')").fetchone()[0]
        assert wait_until(
            lambda: (
                c.execute(
                    "select total_failures from timescaledb_information.job_stats"
                    " where job_id = %s",
                    (job_id,),
                ).fetchone()[0]
                == 1
            ),
            30,
        )
        message = c.execute(
            "select err_message from timescaledb_information.job_errors where job_id = %s",
            (job_id,),
        ).fetchone()[0]
        assert f"broken job {job_id}" in message


def test_sigterm_keeps_committed_work_and_rolls_back_the_rest(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedEngine(data_dir) as engine:
        with connect(engine) as c:
            c.execute("create table ledger (id int primary key)")
            c.execute("insert into ledger select generate_series(1, 100)")
        open_tx = connect(engine)
        open_tx.execute("begin")
        open_tx.execute("insert into ledger values (1000)")
        assert engine.process is not None
        engine.process.send_signal(signal.SIGTERM)
        assert engine.process.wait(timeout=30) == 0
        with pytest.raises(psycopg.OperationalError):
            open_tx.execute("commit")
        open_tx.close()
    with EmbeddedEngine(data_dir) as engine, connect(engine) as c:
        assert c.execute("select count(*), max(id) from ledger").fetchone() == (100, 100)


def test_wasm_fault_closes_every_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_FAULT_INJECTION", "1")
    engine = EmbeddedEngine(log_path=tmp_path / "engine.log")
    with engine, connect(engine) as bystander, connect(engine) as victim:
        bystander.execute("select 1")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            victim.execute("select 'embedded_engine_fault_injection'")
        with pytest.raises(psycopg.OperationalError):
            bystander.execute("select 1")
        assert time.monotonic() - started < 10
        assert engine.process is not None
        assert engine.process.wait(timeout=10) == 70
    assert "FATAL: WASM backend fault" in (tmp_path / "engine.log").read_text()


def test_idle_transaction_is_ended_when_others_wait(tmp_path: Path) -> None:
    args = ["--idle-in-transaction-timeout-ms", "500"]
    with EmbeddedEngine(log_path=tmp_path / "engine.log", extra_args=args) as engine:
        idle = connect(engine)
        idle.execute("create table t (id int)")
        idle.execute("begin")
        idle.execute("insert into t values (1)")
        result: list[int] = []
        waiter = threading.Thread(
            target=lambda: result.append(
                connect(engine).execute("select count(*) from t").fetchone()[0]
            )
        )
        started = time.monotonic()
        waiter.start()
        waiter.join(timeout=30)
        assert result == [0]
        assert time.monotonic() - started < 10
        with pytest.raises((errors.IdleInTransactionSessionTimeout, psycopg.OperationalError)):
            idle.execute("commit")
        idle.close()


def test_engine_crash_is_a_closed_connection(tmp_path: Path) -> None:
    with EmbeddedEngine(log_path=tmp_path / "engine.log") as engine, connect(engine) as c:
        c.execute("select 1")
        assert engine.process is not None
        engine.process.kill()
        engine.process.wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            c.execute("select 1")
        assert time.monotonic() - started < 5


def test_serves_a_unix_socket(tmp_path: Path) -> None:
    node, server = preflight()
    socket_path = tmp_path / ".s.PGSQL.5432"
    proc = subprocess.Popen(
        [node, str(server), "--socket", str(socket_path), "--job-poll-ms", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"event": "ready", "socket": str(socket_path)}
        with psycopg.connect(host=str(tmp_path), port=5432, user="postgres") as c:
            assert c.execute("select 6 * 7").fetchone() == (42,)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
