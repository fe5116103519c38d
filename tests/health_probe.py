from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.request import urlopen

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.rollup_support import wait_for
from worker.monitoring.exporter import serve_metrics

# A throwaway continuous aggregate with its own refresh policy, in the observability schema so
# that health, status, the exporter and the dashboard view all report it like the real rollups.
# Its aggregate calls a function that raises on a negative value: one such row makes every
# refresh over it fail, as a real refresh fails on data it cannot aggregate.
PROBE_TABLE = "observability.health_probe"
PROBE_ROLLUP = "observability.health_probe_hourly"
PROBE_ERROR = "health probe rejects"
JOB_TIMEOUT = 90.0

_CREATE = [
    "create table observability.health_probe (t timestamptz not null, v int not null)",
    "select public.create_hypertable('observability.health_probe', 't')",
    "create function observability.health_probe_check(v int) returns int"
    " language plpgsql immutable as $$ begin"
    f" if v < 0 then raise exception '{PROBE_ERROR} %', v; end if; return v; end $$",
    "create materialized view observability.health_probe_hourly"
    " with (timescaledb.continuous, timescaledb.materialized_only = false) as"
    " select public.time_bucket('1 hour', t) as bucket,"
    " pg_catalog.sum(observability.health_probe_check(v)) as total"
    " from observability.health_probe group by 1 with no data",
]
_POLICY = (
    "select public.add_continuous_aggregate_policy('observability.health_probe_hourly',"
    " start_offset => interval '3 days', end_offset => interval '1 hour',"
    " schedule_interval => interval '1 hour', initial_start => pg_catalog.now() + interval '1 day')"
)
_DROP = [
    "drop materialized view if exists observability.health_probe_hourly cascade",
    "drop table if exists observability.health_probe cascade",
    "drop function if exists observability.health_probe_check(int)",
]


@contextlib.contextmanager
def probe_rollup(conn: psycopg.Connection[Any]) -> Iterator[int]:
    """Create the probe rollup and its refresh policy (not due for a day); yield the job id."""
    for statement in _DROP:
        conn.execute(statement)
    try:
        for statement in _CREATE:
            conn.execute(statement)
        row = conn.execute(_POLICY).fetchone()
        assert row is not None
        yield int(row[0])
    finally:
        for statement in _DROP:
            conn.execute(statement)


def job_failures(conn: psycopg.Connection[Any], job_id: int) -> int:
    row = conn.execute(
        "select coalesce(total_failures, 0) from timescaledb_information.job_stats"
        " where job_id = %s",
        [job_id],
    ).fetchone()
    return int(row[0]) if row else 0


def make_it_fail(conn: psycopg.Connection[Any], job_id: int) -> None:
    """Give the policy a row it cannot aggregate, make it due now and wait until the engine's
    job runner (or a server's scheduler) has run it and recorded the failure."""
    conn.execute(
        "insert into observability.health_probe values (pg_catalog.now() - interval '5 hours', -1)"
    )
    before = job_failures(conn, job_id)
    conn.execute("select public.alter_job(%s, next_start => pg_catalog.now())", [job_id])
    assert wait_for(lambda: job_failures(conn, job_id) > before, JOB_TIMEOUT), (
        "the probe's refresh policy did not run"
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(database_url: str) -> Samples:
    """GET /metrics from the exporter the worker serves; samples by name and labels."""
    server, thread = serve_metrics(0, database_url, addr="127.0.0.1")
    try:
        with urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=30) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def db_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("select pg_catalog.now()").fetchone()
    assert row is not None
    return row[0]
