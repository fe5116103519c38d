from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest

from tests.rollup_support import close, rollup_conn

__all__ = ["rollup_conn"]

OFFSET = 1_100_000
GAMMA = 1.01
# Out of order and repeated on purpose: each rank is found walking up from the first bucket or
# down from the last one, continuing from where the previous rank was found when that is right.
QS = [0.99, 0.5, 0.95, 0.01, 0.99, 1.0, 0.0, 0.7, 0.6, 0.999, 0.51, 0.49, None, 0.25]


def bucket_value(key: int) -> float:
    if key == 0:
        return 0.0
    value = 2 * GAMMA ** (abs(key) - 1 - OFFSET) / (GAMMA + 1)
    return value if key > 0 else -value


def reference(sketch: tuple[int, float, float, list[int], list[int]], q: float) -> float:
    """percentile_cont over the sketch's bucket values, the extremes exact, clamped to them."""
    n, low, high, keys, counts = sketch
    if not counts and n == len(keys):  # the unit form, its counts left out
        counts = [1] * n
    merged: dict[int, int] = {}
    for key, count in zip(keys, counts, strict=True):
        merged[key] = merged.get(key, 0) + count
    ranked = [key for key in sorted(merged) for _ in range(merged[key])]

    def value(rank: int) -> float:
        if rank == 1:
            return low
        if rank == n:
            return high
        return bucket_value(ranked[rank - 1])

    h = q * (n - 1)
    below, above = value(math.floor(h) + 1), value(math.ceil(h) + 1)
    return max(low, min(high, below + (h - math.floor(h)) * (above - below)))


def sketches(conn: psycopg.Connection[Any], expression: str, groups: int) -> list[Any]:
    """Sketches of 2,000 values in `groups` pieces, each piece rolled up from 7 smaller ones
    (so small pieces take the unsorted small paths, pieces of small parts the sorted unit form
    and large ones the canonical merge)."""
    conn.execute("select pg_catalog.setseed(0.17)")
    return conn.execute(
        f"""
        with data as materialized (
          select g, ({expression})::float8 as x from pg_catalog.generate_series(1, 2000) as g
        ), pieces as (
          select g % {groups} as piece, g % 7 as part, observability.percentile_agg(x) as s
          from data group by 1, 2
        )
        select observability.rollup(s) as s from pieces group by piece
        """
    ).fetchall()


@pytest.mark.parametrize(
    ("expression", "groups"),
    [
        ("pg_catalog.exp(6 + 1.2 * random())", 1),  # hundreds of sorted keys
        ("pg_catalog.exp(6 + 1.2 * random())", 40),  # 50 values each: unsorted small sketches
        ("pg_catalog.exp(6 + 1.2 * random())", 10),  # 200 values each: the sorted unit form
        ("pg_catalog.floor(random() * 20) - 5", 3),  # ties, zero and negative values
        ("case when random() < 0.97 then 100 else 1e6 end", 2),  # a long upper tail
    ],
)
def test_percentiles_read_every_rank_from_the_right_bucket(
    rollup_conn: psycopg.Connection[Any], expression: str, groups: int
) -> None:
    found = sketches(rollup_conn, expression, groups)
    assert len(found) == groups
    for (sketch,) in found:
        row = rollup_conn.execute(
            "select (t.s).n, (t.s).min_value, (t.s).max_value, (t.s).keys, (t.s).counts,"
            " observability.approx_percentile_array(%(qs)s::float8[], t.s)"
            " from (select %(s)s::observability.percentile_sketch as s) as t",
            {"s": sketch, "qs": QS},
        ).fetchone()
        assert row is not None
        n, low, high, keys, counts, estimates = row
        expected = [None if q is None else reference((n, low, high, keys, counts), q) for q in QS]
        assert all(close(e, x, rel=1e-12) for e, x in zip(estimates, expected, strict=True)), (
            keys,
            estimates,
            expected,
        )
