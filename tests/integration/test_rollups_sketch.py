from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.rollup_support import close, rollup_conn, sketch_schema

__all__ = ["rollup_conn"]

QS = "array[0.5, 0.95, 0.99]::float8[]"
N = 20000
# Value expressions over g (1..n) and random(); the seed is set per test.
NORMAL = (
    "pg_catalog.sqrt(-2 * pg_catalog.ln(1 - random()))"
    " * pg_catalog.cos(2 * pg_catalog.pi() * random())"
)
DISTRIBUTIONS = {
    "uniform": "random() * 1000",
    "lognormal": f"pg_catalog.exp(6 + 1.2 * {NORMAL})",
    "bimodal": f"case when random() < 0.7 then 100 + 10 * {NORMAL} else 5000 + 300 * {NORMAL} end",
    "constant": "42.5",
    "heavy_tailed": "10 / pg_catalog.power(1 - random(), 1 / 1.2)",
    "tiny": "1e-9 + random() * 1e-6",
    "huge": f"1e300 * pg_catalog.exp({NORMAL})",
    "negative": f"-pg_catalog.exp(5 + {NORMAL})",
    "mostly_zero": "case when random() < 0.6 then 0 else random() * 100 end",
    "integers_with_ties": "pg_catalog.floor(random() * 20)",
}


def percentiles(
    conn: psycopg.Connection[Any], expression: str, n: int = N, groups: int = 1, levels: int = 1
) -> tuple[list[float], list[float]]:
    """(exact percentile_cont, sketch estimate); the sketch is built in `groups` pieces and
    merged with rollup() `levels` times (levels=2: pieces of pieces)."""
    schema = sketch_schema(conn)
    conn.execute("select pg_catalog.setseed(0.42)")
    if levels == 1:
        sketch = (
            f"(select {schema}.rollup(s) from (select {schema}.percentile_agg(x) as s"
            f" from data group by g % {groups}) as p)"
        )
    else:
        sketch = (
            f"(select {schema}.rollup(s) from (select {schema}.rollup(s) as s from"
            f" (select g % {groups} as piece, {schema}.percentile_agg(x) as s from data"
            f" group by g % {groups}) as p group by p.piece % 7) as q)"
        )
    row = conn.execute(
        f"""
        with data as materialized (
          select g, ({expression})::float8 as x from pg_catalog.generate_series(1, {n}) as g
        )
        select
          (select pg_catalog.percentile_cont({QS}) within group (order by x) from data),
          {schema}.approx_percentile_array({QS}, {sketch})
        """
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_percentiles_within_one_percent(rollup_conn: psycopg.Connection, name: str) -> None:
    exact, estimate = percentiles(rollup_conn, DISTRIBUTIONS[name])
    assert all(close(e, x) for e, x in zip(estimate, exact, strict=True)), (exact, estimate)


@pytest.mark.parametrize("name", ["lognormal", "bimodal", "heavy_tailed", "uniform"])
def test_rollups_of_rollups_stay_within_one_percent(
    rollup_conn: psycopg.Connection, name: str
) -> None:
    exact, merged = percentiles(rollup_conn, DISTRIBUTIONS[name], groups=50, levels=2)
    assert all(close(m, x) for m, x in zip(merged, exact, strict=True)), (exact, merged)
    _, once = percentiles(rollup_conn, DISTRIBUTIONS[name])
    # Merging loses nothing: the buckets just add up.
    assert all(close(m, o, rel=1e-9) for m, o in zip(merged, once, strict=True))


def test_a_single_value(rollup_conn: psycopg.Connection) -> None:
    exact, estimate = percentiles(rollup_conn, "123.456", n=1)
    assert exact == estimate == [123.456] * 3


def test_small_groups(rollup_conn: psycopg.Connection) -> None:
    # Few values per group, as hourly rows per user have: interpolation between two values.
    for n in (2, 3, 5, 17, 65, 200):
        exact, estimate = percentiles(rollup_conn, "random() * 1000 + 1", n=n)
        assert all(close(e, x) for e, x in zip(estimate, exact, strict=True)), (n, exact)


def test_nulls_are_ignored(rollup_conn: psycopg.Connection) -> None:
    expression = "case when g % 3 = 0 then null else g end"
    exact, estimate = percentiles(rollup_conn, expression, n=3000)
    assert all(close(e, x) for e, x in zip(estimate, exact, strict=True))
    schema = sketch_schema(rollup_conn)
    row = rollup_conn.execute(
        f"select {schema}.approx_percentile(0.5, {schema}.percentile_agg(x))"
        " from (values (null::float8), (null)) as v (x)"
    ).fetchone()
    assert row == (None,)


def test_no_rows_make_no_sketch(rollup_conn: psycopg.Connection) -> None:
    schema = sketch_schema(rollup_conn)
    row = rollup_conn.execute(
        f"select {schema}.percentile_agg(x) is null from (select 1.0::float8 as x) as v where false"
    ).fetchone()
    assert row == (True,)


def test_percentile_bounds(rollup_conn: psycopg.Connection) -> None:
    schema = sketch_schema(rollup_conn)
    row = rollup_conn.execute(
        f"select {schema}.approx_percentile_array(array[0, 1]::float8[],"
        f" {schema}.percentile_agg(x)) from pg_catalog.generate_series(3, 977) as x"
    ).fetchone()
    assert row == ([3.0, 977.0],)
    with pytest.raises(psycopg.Error):
        rollup_conn.execute(
            f"select {schema}.approx_percentile(1.5, {schema}.percentile_agg(x::float8))"
            " from pg_catalog.generate_series(1, 10) as x"
        )


def test_fallback_ignores_nan_and_infinity(rollup_conn: psycopg.Connection) -> None:
    if sketch_schema(rollup_conn) != "observability":
        pytest.skip("the project's own sketch is not the one in use")
    row = rollup_conn.execute(
        "select (s).n, (s).min_value, (s).max_value,"
        " observability.approx_percentile(0.5, s)"
        " from (select observability.percentile_agg(x) as s from (values (1.0::float8),"
        " ('NaN'), ('Infinity'), ('-Infinity'), (null), (3.0)) as v (x)) as p"
    ).fetchone()
    assert row == (2, 1.0, 3.0, 2.0)


def test_fallback_small_and_large_sketches_read_alike(rollup_conn: psycopg.Connection) -> None:
    """Below 64 values the final function skips sorting; the estimates must not change."""
    if sketch_schema(rollup_conn) != "observability":
        pytest.skip("the project's own sketch is not the one in use")
    row = rollup_conn.execute(
        "select observability.approx_percentile_array(array[0.1, 0.5, 0.9],"
        " observability.sketch_from_values(v)),"
        " observability.approx_percentile_array(array[0.1, 0.5, 0.9],"
        " observability.sketch_bin(v))"
        " from (select pg_catalog.array_agg((g * 7919 % 1000)::float8) as v"
        " from pg_catalog.generate_series(1, 60) as g) as d"
    ).fetchone()
    assert row is not None and row[0] == row[1]
