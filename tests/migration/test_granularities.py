from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from worker.models.granularities import CATALOGUE, GRANULARITIES, ROLLUP_SOURCES, rollup_name
from worker.rollups.refresh import rollups_for
from worker.schema.migrate import CONNECT_ARGS


@pytest.fixture(scope="module")
def db(migrated_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(migrated_database_url, autocommit=True, **CONNECT_ARGS) as connection:
        yield connection


def test_the_python_catalogue_mirrors_the_database_one(db: psycopg.Connection) -> None:
    rows = db.execute(
        "select name, level, bucket_width from observability.granularities order by position"
    ).fetchall()
    assert rows == [(g.name, g.level, g.width) for g in CATALOGUE]


def test_the_rollups_view_names_every_continuous_aggregate(db: psycopg.Connection) -> None:
    listed = db.execute(
        "select source, granularity, rollup::text from observability.rollups"
    ).fetchall()
    expected = {(s, g, rollup_name(s, g)) for s in ROLLUP_SOURCES for g in GRANULARITIES}
    assert set(listed) == expected
    existing = db.execute(
        "select format('%I.%I', view_schema, view_name)"
        " from timescaledb_information.continuous_aggregates"
        " where view_schema = 'observability'"
    ).fetchall()
    assert {name for (name,) in existing} == {rollup for _, _, rollup in expected}


def test_each_rollup_buckets_by_its_catalogue_width(db: psycopg.Connection) -> None:
    # The continuous aggregates spell their widths out (they cannot be altered in place): this
    # holds them to the catalogue.
    widths = dict(
        db.execute(
            """
            select format('%I.%I', c.view_schema, c.view_name), f.bucket_width::interval
            from timescaledb_information.continuous_aggregates as c
            join _timescaledb_catalog.hypertable as h
              on h.schema_name = c.materialization_hypertable_schema
              and h.table_name = c.materialization_hypertable_name
            join _timescaledb_catalog.continuous_aggs_bucket_function as f
              on f.mat_hypertable_id = h.id
            where c.view_schema = 'observability'
            """
        ).fetchall()
    )
    for granularity in CATALOGUE:
        for source in ROLLUP_SOURCES:
            assert widths[rollup_name(source, granularity.name)] == granularity.width


def test_refresh_policies_follow_the_catalogue(db: psycopg.Connection) -> None:
    policies = db.execute(
        """
        select r.granularity, (j.config ->> 'start_offset')::interval,
          (j.config ->> 'end_offset')::interval, j.schedule_interval,
          g.refresh_start_offset, g.refresh_end_offset, g.refresh_schedule
        from observability.rollups as r
        join observability.granularities as g on g.name = r.granularity
        join timescaledb_information.jobs as j
          on j.proc_name = 'policy_refresh_continuous_aggregate'
          and format('%I.%I', j.hypertable_schema, j.hypertable_name)::regclass = r.rollup
        """
    ).fetchall()
    assert len(policies) == len(CATALOGUE) * len(ROLLUP_SOURCES)
    for _, *actual_and_wanted in policies:
        assert actual_and_wanted[:3] == actual_and_wanted[3:]


def test_a_granularity_refreshes_its_own_level_and_those_below() -> None:
    assert [level for _, level in rollups_for("hour")] == ["hour"] * 3
    week = rollups_for("week")
    assert [level for _, level in week] == ["hour"] * 3 + ["day"] * 3 + ["week"] * 3
    assert week[0] == ("observability.traces_hourly", "hour")
    assert week[-1] == ("observability.document_events_weekly", "week")
