"""The unit form of the project's sketch (sql/idempotent/012-sketch-speed.sql): sketches with one
count per key merge by sorting their keys, and read a rank straight from its position. Each
result is held against the canonical merge of the same inputs and against the values sent."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import psycopg
import pytest

from tests.integration.test_sketch_percentile_walk import QS, reference
from tests.rollup_support import rollup_conn, sketch_schema

__all__ = ["rollup_conn"]

UNIT_LIMIT = 8192  # the most values observability.sketch_stays_unit keeps in the unit form
Sketch = tuple[int, float, float, list[int], list[int]]


@pytest.fixture
def conn(rollup_conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    if sketch_schema(rollup_conn) != "observability":
        pytest.skip("the toolkit's sketch is in use; the project's own is not")
    return rollup_conn


def pieces(conn: psycopg.Connection[Any], values: list[list[float]]) -> list[Any]:
    """One percentile_agg sketch per list of values, as an hourly rollup builds them."""
    return [
        conn.execute(
            "select observability.percentile_agg(v) from pg_catalog.unnest(%s::float8[]) as v",
            [vs],
        ).fetchone()[0]  # type: ignore[index]
        for vs in values
    ]


def merged(conn: psycopg.Connection[Any], sketches: list[Any], how: str) -> tuple[Sketch, list]:
    """(sketch fields, p at QS) of rollup() ('rollup') or of the canonical merge ('combine')."""
    merge = {
        "rollup": "(select observability.rollup(s) from pg_catalog.unnest(%(s)s::{t}) as s)",
        "combine": "observability.sketch_combine(%(s)s::{t})",
    }[how].format(t="observability.percentile_sketch[]")
    row = conn.execute(
        f"select (m.s).n, (m.s).min_value, (m.s).max_value, (m.s).keys, (m.s).counts,"
        f" observability.approx_percentile_array(%(qs)s::float8[], m.s)"
        f" from (select {merge} as s) as m",
        {"s": sketches, "qs": QS},
    ).fetchone()
    assert row is not None
    return tuple(row[:5]), row[5]  # type: ignore[return-value]


def values_per_key(sketch: Sketch) -> Counter[int]:
    n, _, _, keys, counts = sketch
    found: Counter[int] = Counter()
    for key, count in zip(keys, counts or [1] * n, strict=True):
        found[key] += count
    return found


def sparse_values(rng: random.Random, groups: int, per_group: int) -> list[list[float]]:
    """Latency-like values, few per group, almost each in a bucket of its own."""
    return [[rng.lognormvariate(6, 1.2) for _ in range(per_group)] for _ in range(groups)]


def test_the_sort_keeps_every_key_in_order(conn: psycopg.Connection[Any]) -> None:
    rng = random.Random(7)
    cases = [[], [5], [3, -1, 2, 2, 0, -1_100_500, 1_100_700, 2]]
    cases += [[rng.randint(-1_200_000, 1_200_000) for _ in range(n)] for n in (65, 900, 5000)]
    for keys in cases:
        for function in ("sketch_sort_keys", "sketch_sort_keys_sql"):
            row = conn.execute(f"select observability.{function}(%s::integer[])", [keys]).fetchone()
            assert row is not None and row[0] == sorted(keys), function
        for function in ("sketch_distinct_sorted_keys", "sketch_distinct_sorted_keys_sql"):
            row = conn.execute(
                f"select observability.{function}(%s::integer[])", [sorted(keys)]
            ).fetchone()
            assert row is not None and row[0] == sorted(set(keys)), function


def test_intarray_does_the_sorting_where_the_server_has_it(conn: psycopg.Connection[Any]) -> None:
    """The embedded engine loads intarray; a server with PostgreSQL's contrib modules has it."""
    available = conn.execute(
        "select exists (select from pg_catalog.pg_available_extensions where name = 'intarray')"
    ).fetchone()
    assert available is not None
    for function, call in (
        ("sketch_sort_keys", ".sort(ks)"),
        ("sketch_distinct_sorted_keys", ".uniq(ks)"),
    ):
        body = conn.execute(
            "select pg_catalog.pg_get_functiondef(%s::regprocedure)",
            [f"observability.{function}(integer[])"],
        ).fetchone()
        assert body is not None
        assert (call in body[0]) == available[0], body[0]


@pytest.mark.parametrize(("groups", "per_group"), [(3, 40), (24, 3), (7, 60), (2, 64)])
def test_unit_pieces_merge_into_the_unit_form(
    conn: psycopg.Connection[Any], groups: int, per_group: int
) -> None:
    values = sparse_values(random.Random(groups * 100 + per_group), groups, per_group)
    sketches = pieces(conn, values)
    unit, estimates = merged(conn, sketches, "rollup")
    canonical, canonical_estimates = merged(conn, sketches, "combine")
    n, low, high, keys, counts = unit
    flat = [v for vs in values for v in vs]
    assert (n, low, high) == (len(flat), min(flat), max(flat))
    assert counts == [] and len(keys) == n  # one value per key, the counts left out
    if n > 64:
        assert keys == sorted(keys)
    assert values_per_key(unit) == values_per_key(canonical)
    assert estimates == canonical_estimates
    assert estimates == [None if q is None else reference(unit, q) for q in QS]


def test_past_the_unit_limit_the_merge_counts_each_key_once(
    conn: psycopg.Connection[Any],
) -> None:
    values = sparse_values(random.Random(3), groups=UNIT_LIMIT // 60 + 1, per_group=60)
    sketches = pieces(conn, values)
    (n, _, _, keys, counts), estimates = merged(conn, sketches, "rollup")
    canonical, canonical_estimates = merged(conn, sketches, "combine")
    assert n == sum(len(vs) for vs in values) > UNIT_LIMIT
    assert keys == sorted(set(keys)) and sum(counts) == n and max(counts) > 1
    assert (n, keys, counts) == (canonical[0], canonical[3], canonical[4])
    assert estimates == canonical_estimates


def test_a_counted_piece_makes_the_merge_canonical(conn: psycopg.Connection[Any]) -> None:
    """A canonical piece with a count above one (as sketch_bin makes them, and as rollups
    stored before the unit form) is not in the unit form, so neither is the merge."""
    counted = conn.execute("select observability.sketch_bin(%s::float8[])", [[1e6] * 70])
    values = sparse_values(random.Random(11), groups=4, per_group=30)
    sketches = [*pieces(conn, values), counted.fetchone()[0]]  # type: ignore[index]
    merged_sketch, estimates = merged(conn, sketches, "rollup")
    n, _, _, keys, counts = merged_sketch
    assert n == 190 and keys == sorted(set(keys)) and max(counts) == 70
    assert estimates == [None if q is None else reference(merged_sketch, q) for q in QS]


def spread(n: int) -> list[float]:
    """n values 2 % apart: each in a bucket of its own."""
    return [1.02**i for i in range(n)]


def aggregated(conn: psycopg.Connection[Any], values: list[Any]) -> Sketch:
    row = conn.execute(
        "select (s).n, (s).min_value, (s).max_value, (s).keys, (s).counts"
        " from (select observability.percentile_agg(v) as s"
        " from pg_catalog.unnest(%s::float8[]) as v) as a",
        [values],
    ).fetchone()
    assert row is not None
    return tuple(row)  # type: ignore[return-value]


def binned_pairs(conn: psycopg.Connection[Any], values: list[float]) -> tuple[list, list]:
    row = conn.execute(
        "select (s).keys, (s).counts from (select observability.sketch_bin(%s::float8[]) as s) b",
        [values],
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize("size", [65, 2000, UNIT_LIMIT])
def test_percentile_agg_keeps_sparse_values_in_the_unit_form(
    conn: psycopg.Connection[Any], size: int
) -> None:
    values = spread(size)
    rng = random.Random(size)
    rng.shuffle(values)
    unit = aggregated(conn, [*values, None, math.nan, math.inf])
    n, low, high, keys, counts = unit
    assert (n, low, high, counts) == (size, min(values), max(values), [])
    assert keys == sorted(set(keys)) and len(keys) == size
    assert values_per_key(unit) == values_per_key((n, low, high, *binned_pairs(conn, values)))


@pytest.mark.parametrize(
    ("values", "why"),
    [
        (spread(UNIT_LIMIT + 1), "more values than the limit"),
        ([float(i % 100) for i in range(1601)], "more than 16 values a bucket"),
    ],
)
def test_percentile_agg_counts_the_other_values_once_per_key(
    conn: psycopg.Connection[Any], values: list[float], why: str
) -> None:
    sketch = aggregated(conn, values)
    n, _, _, keys, counts = sketch
    assert n == len(values) and keys == sorted(set(keys)) and sum(counts) == n, why
    assert values_per_key(sketch) == Counter(dict(zip(*binned_pairs(conn, values), strict=True)))


def test_unit_pieces_with_many_ties_merge_into_pairs(conn: psycopg.Connection[Any]) -> None:
    """Small pieces are unit-form whatever their ties; their merge is not, once it holds more
    than 16 values a bucket."""
    values = [[float(i % 10) for i in range(piece, piece + 50)] for piece in range(20)]
    sketches = pieces(conn, values)
    merged_sketch, estimates = merged(conn, sketches, "rollup")
    canonical, canonical_estimates = merged(conn, sketches, "combine")
    assert merged_sketch == canonical and max(merged_sketch[4]) > 1
    assert estimates == canonical_estimates


def test_unit_forms_roll_up_again_like_the_values_they_hold(
    conn: psycopg.Connection[Any],
) -> None:
    """Days of unit pieces, then a week of those days, against percentile_cont of the values."""
    rng = random.Random(5)
    days = [sparse_values(rng, groups=24, per_group=rng.randint(1, 5)) for _ in range(7)]
    day_sketches = [
        conn.execute(
            "select observability.rollup(s)"
            " from pg_catalog.unnest(%s::observability.percentile_sketch[]) as s",
            [pieces(conn, day)],
        ).fetchone()[0]  # type: ignore[index]
        for day in days
    ]
    week, estimates = merged(conn, day_sketches, "rollup")
    flat = sorted(v for day in days for vs in day for v in vs)
    assert week[0] == len(flat) == len(week[3]) and week[4] == []
    exact = conn.execute(
        "select pg_catalog.percentile_cont(array[0.5, 0.95, 0.99]) within group (order by v)"
        " from pg_catalog.unnest(%s::float8[]) as v",
        [flat],
    ).fetchone()
    assert exact is not None
    week_estimates = dict(zip(QS, estimates, strict=True))
    for q, value in zip((0.5, 0.95, 0.99), exact[0], strict=True):
        assert abs(week_estimates[q] - value) <= 0.005 * abs(value)  # the 0.5 % bound
