from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.integration.test_aggregation_errors import cli
from worker.rollups import InvalidWindow, aggregate_observability_metrics, backfill_metrics
from worker.rollups.service import WindowInFuture

HOUR = timedelta(hours=1)


def _runs(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select kind, status, range_end, done_until from observability.aggregation_runs"
    ).fetchall()


def test_backfill_refuses_a_window_ending_in_the_future(agg_conn: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    with pytest.raises(WindowInFuture, match="after the hour bucket that holds now"):
        backfill_metrics(
            now - HOUR, now + timedelta(days=400), "hour", database_url=agg_conn.info.dsn
        )
    with pytest.raises(InvalidWindow, match="after the day bucket that holds now"):
        aggregate_observability_metrics(
            "day", now - timedelta(days=2), now + timedelta(days=2), database_url=agg_conn.info.dsn
        )
    assert _runs(agg_conn) == []


def test_backfill_command_refuses_a_future_end_with_exit_code_2(
    agg_conn: psycopg.Connection,
) -> None:
    now = datetime.now(UTC)
    result = cli(
        "backfill", "--from", (now - timedelta(days=1)).date().isoformat(),
        "--to", (now + timedelta(days=400)).date().isoformat(), "--granularity", "day",
        url=agg_conn.info.dsn,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "after the day bucket that holds now" in result.stderr
    assert "backfilled" not in result.stdout
    assert _runs(agg_conn) == []
    status = cli("status", url=agg_conn.info.dsn)
    assert status.returncode == 0, status.stderr
    assert str(now.year + 1) not in status.stdout.split("aggregation worker")[1]


def test_backfill_up_to_now_still_syncs_the_open_bucket(agg_conn: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    result = cli(
        "backfill", "--from", (now - 2 * HOUR).isoformat(), "--to", now.isoformat(),
        "--granularity", "hour", url=agg_conn.info.dsn,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [(kind, status, range_end, done_until)] = _runs(agg_conn)
    assert (kind, status) == ("backfill", "succeeded")
    assert range_end == done_until == now.replace(minute=0, second=0, microsecond=0) + HOUR
