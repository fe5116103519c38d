from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.health_probe import PROBE_ROLLUP, db_now, probe_rollup, sample, scrape
from tests.rollup_support import Window, connect, insert_rows, refresh
from worker.cli.main import main
from worker.monitoring.health import rollup_health

HOUR = timedelta(hours=1)
YEAR_2100 = datetime(2100, 1, 1, 12, 30, tzinfo=UTC)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _llm_span(started_at: datetime) -> dict[str, Any]:
    from tests.factories import create_llm_span

    return create_llm_span(started_at=started_at)


def test_future_raw_rows_are_counted_apart_and_do_not_make_a_rollup_look_stale(
    agg_conn: psycopg.Connection[Any],
) -> None:
    now = db_now(agg_conn)
    recent = now - 2 * HOUR
    insert_rows(agg_conn, "observability.spans", [_llm_span(recent)])
    # an llm span written by plain SQL with a date in 2100 (a client with a broken clock)
    insert_rows(agg_conn, "observability.spans", [_llm_span(YEAR_2100)])
    # the hourly rollup has materialized the recent span, as its policy would
    refresh(agg_conn, "observability.llm_spans_hourly", Window(_hour(now) - 3 * HOUR, _hour(now)))

    health = rollup_health(agg_conn)
    spans = next(r for r in health.raw if r.table == "observability.spans")
    assert spans.future_rows == 1
    assert spans.newest_future == YEAR_2100
    assert all(r.future_rows == 0 for r in health.raw if r.table != "observability.spans")
    assert {r.table for r in health.raw} == {
        f"observability.{t}" for t in ("traces", "spans", "span_events", "document_events")
    }
    assert health.newest_raw["llm_spans"] == recent

    samples = scrape(agg_conn.info.dsn)
    assert sample(samples, "observability_database_up") == 1
    assert sample(samples, "observability_raw_future_rows", table="observability.spans") == 1
    assert sample(samples, "observability_raw_future_rows", table="observability.traces") == 0
    # the rollup has every row up to now: it is not 75 years behind its raw data
    behind = sample(
        samples,
        "observability_rollup_unmaterialized_seconds",
        rollup="observability.llm_spans_hourly",
    )
    assert behind == 0


def test_infinite_raw_timestamps_keep_the_exporter_and_status_up(
    agg_conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.factories import create_trace

    # a hypertable takes 'infinity' as a time; psycopg cannot load it into a datetime
    insert_rows(agg_conn, "observability.traces", [create_trace(started_at="infinity")])
    samples = scrape(agg_conn.info.dsn)
    assert sample(samples, "observability_database_up") == 1
    assert sample(samples, "observability_raw_future_rows", table="observability.traces") == 1
    rollup = "observability.traces_hourly"
    assert sample(samples, "observability_rollup_unmaterialized_seconds", rollup=rollup) is None

    assert main(["status", "--database-url", agg_conn.info.dsn]) == 0
    out = capsys.readouterr().out
    assert "observability.traces has 1 row dated more than 5m ahead of now" in out
    assert "(the latest at infinity)" in out


def test_status_names_future_raw_rows(
    agg_conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    insert_rows(agg_conn, "observability.spans", [_llm_span(YEAR_2100), _llm_span(YEAR_2100)])
    assert main(["status", "--database-url", agg_conn.info.dsn]) == 0
    out = capsys.readouterr().out
    assert (
        "observability.spans has 2 rows dated more than 5m ahead of now "
        "(the latest at 2100-01-01 12:30:00+0000): freshness leaves them out" in out
    )
    assert "observability.traces has" not in out


@pytest.fixture
def probe_conn(migrated_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(migrated_database_url) as conn:
        yield conn


def test_materialized_future_buckets_are_counted_apart_from_freshness(
    probe_conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with probe_rollup(probe_conn):
        now = db_now(probe_conn)
        probe_conn.execute(
            "insert into observability.health_probe values (%s, 1), (%s, 2)",
            [now - 3 * HOUR, YEAR_2100],
        )
        # refreshing without an end materializes the year-2100 bucket: the watermark moves there
        probe_conn.execute(
            "call public.refresh_continuous_aggregate(%s::regclass, null, null)", [PROBE_ROLLUP]
        )
        probe = next(r for r in rollup_health(probe_conn).rollups if r.name == PROBE_ROLLUP)
        assert probe.watermark == _hour(YEAR_2100) + HOUR
        assert probe.lag == timedelta(0)  # materialized past now: no lag, and never negative
        assert probe.newest_bucket == _hour(now - 3 * HOUR)
        assert probe.future_buckets == 1
        assert probe.newest_future_bucket == _hour(YEAR_2100)

        samples = scrape(probe_conn.info.dsn)
        assert sample(samples, "observability_rollup_lag_seconds", rollup=PROBE_ROLLUP) == 0
        assert sample(samples, "observability_rollup_future_buckets", rollup=PROBE_ROLLUP) == 1
        newest = sample(
            samples, "observability_rollup_newest_bucket_timestamp_seconds", rollup=PROBE_ROLLUP
        )
        assert newest == _hour(now - 3 * HOUR).timestamp()
        healthy = sample(
            samples, "observability_rollup_future_buckets", rollup="observability.traces_hourly"
        )
        assert healthy == 0

        view = probe_conn.execute(
            "select watermark, lag_seconds from observability.rollup_freshness where rollup = %s",
            [PROBE_ROLLUP.removeprefix("observability.")],
        ).fetchone()
        assert view == (_hour(YEAR_2100) + HOUR, 0)

        assert main(["status", "--database-url", probe_conn.info.dsn]) == 0
        out = capsys.readouterr().out
        assert (
            f"{PROBE_ROLLUP} has 1 materialized bucket dated more than 5m ahead of now "
            "(the latest at 2100-01-01 12:00:00+0000)" in out
        )
