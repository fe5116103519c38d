"""rollup()'s final function in C (engine/sketch, sql/idempotent/013-sketch-merge-in-c.sql):
the same sketch as the PL/pgSQL merge for every shape of input, clear errors for broken
sketches, and the PL/pgSQL merge kept where the library cannot be loaded."""

from __future__ import annotations

import os
import random
from typing import Any

import psycopg
import pytest

from tests.integration.test_sketch_unit_form import pieces, sparse_values
from tests.rollup_support import rollup_conn, sketch_schema
from worker.schema.sqlfiles import discover
from worker.schema.sqltemplate import sketch_merge_language

__all__ = ["rollup_conn"]

SKETCHES = "observability.percentile_sketch[]"
MERGE = "observability.sketch_merge(observability.percentile_sketch[])"


@pytest.fixture
def conn(rollup_conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    if sketch_schema(rollup_conn) != "observability":
        pytest.skip("the toolkit's sketch is in use; the project's own is not")
    return rollup_conn


def merge_language(conn: psycopg.Connection[Any]) -> str:
    language = sketch_merge_language(conn)
    assert language is not None
    return language


@pytest.fixture
def c_conn(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    if merge_language(conn) != "c":
        pytest.skip(
            "this server has no observability_sketch library (make sketch-install);"
            " its sketches merge in PL/pgSQL"
        )
    return conn


def both_merges(conn: psycopg.Connection[Any], sketches: Any) -> tuple[Any, Any]:
    row = conn.execute(
        f"select observability.sketch_merge(%(s)s::{SKETCHES})::text,"
        f" observability.sketch_merge_plpgsql(%(s)s::{SKETCHES})::text",
        {"s": sketches},
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def sketch(n: int | None, lo: float, hi: float, keys: list[int], counts: list[int]) -> str:
    """A sketch literal, for shapes percentile_agg does not write itself."""
    fields = [
        "" if n is None else str(n),
        repr(lo),
        repr(hi),
        "{" + ",".join(map(str, keys)) + "}",
        "{" + ",".join(map(str, counts)) + "}",
    ]
    return "(" + ",".join(f'"{f}"' if "," in f else f for f in fields) + ")"


def unit_runs(keys: list[int], runs: int) -> list[str]:
    """keys dealt into runs unit-form sketches, each sorted: the limits of the unit form."""
    return [
        sketch(len(part), 1.0, 2.0, sorted(part), [])
        for part in (keys[i::runs] for i in range(runs))
    ]


KEYS = [1100001 + 3 * k for k in range(200)]


def counted_runs(keys: int) -> list[str]:
    """Two canonical sketches of keys keys in all, some shared: the limit of the small merge."""
    first = KEYS[: keys // 2]
    second = KEYS[keys // 2 - 5 : keys - 5]
    return [
        sketch(2 * len(first), 1.0, 2.0, first, [2] * len(first)),
        sketch(3 * len(second), 0.5, 3.0, second, [3] * len(second)),
    ]


def shapes(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Inputs of every shape the merge tells apart, from real sketches where possible."""
    rng = random.Random(20261204)
    sparse = pieces(conn, sparse_values(rng, 7, 80))  # sorted unit form, like a user's days
    tiny = pieces(conn, sparse_values(rng, 5, 9))  # unit form, unsorted
    dense = pieces(conn, [[rng.choice([1.0, 2.0, 3.0]) for _ in range(3000)] for _ in range(3)])
    mixed_values = [
        [0.0, -0.5, -7.25, 1e-300, 1e300, 42.0] * 20,
        [rng.gauss(0, 50) for _ in range(90)],
    ]
    big_unit = pieces(conn, sparse_values(rng, 3, 3000))  # 9,000 values: past the unit limit
    combined = conn.execute(
        f"select observability.sketch_combine(%s::{SKETCHES})", [sparse[:3]]
    ).fetchone()[0]  # type: ignore[index]
    return {
        "no array": None,
        "empty array": [],
        "one sketch": sparse[:1],
        "one NULL": [None],
        "NULLs only": [None, None],
        "unit, small in all": tiny[:3],
        "unit, sorted runs": sparse,
        "unit, sorted and unsorted runs": sparse[:3] + tiny,
        "unit, NULLs between": [None, *sparse[:2], None, tiny[0]],
        "unit, past 8,192 values": big_unit,
        "unit, many values per key": pieces(
            conn, [[rng.choice([5.0, 6.0]) for _ in range(40)]] * 4
        ),
        "unit, 16 values per key": unit_runs([1100001 + k for k in range(5)] * 16, 2),
        "unit, 17 values per key": unit_runs([1100001 + k for k in range(5)] * 17, 2),
        "unit, 8,192 values": unit_runs([1100001 + k % 3000 for k in range(8192)], 3),
        "unit, 8,193 values": unit_runs([1100001 + k % 3000 for k in range(8193)], 3),
        "canonical": dense,
        "canonical and unit": [dense[0], *sparse[:2], combined],
        "negative, zero and extreme values": pieces(conn, mixed_values),
        "small mixed pairs": [
            sketch(3, 1.0, 2.0, [1100001, 1100070], [2, 1]),
            sketch(2, 0.5, 9.0, [1099931, 1100222], []),
        ],
        "small mixed pairs, unsorted with repeats": [
            sketch(4, 1.0, 5.0, [1100160, 1100001, 1100160], [1, 2, 1]),
            sketch(1, 3.0, 3.0, [1100111], []),
        ],
        "a sketch of no values": [sketch(0, 1.0, 1.0, [], []), *tiny[:2]],
        "a sketch without n": [sketch(None, 1.0, 1.0, [7], [1]), *sparse[:2]],
        "unit, 64 values in all": [sketch(32, 1.0, 2.0, KEYS[32:64], []), *unit_runs(KEYS[:32], 1)],
        "unit, 65 values in all": [sketch(33, 1.0, 2.0, KEYS[32:65], []), *unit_runs(KEYS[:32], 1)],
        "pairs, 64 keys in all": counted_runs(64),
        "pairs, 65 keys in all": counted_runs(65),
        "unit, without a counts array": [
            '(2,1,2,"{1100001,1100070}",)',
            sketch(70, 0.5, 3.0, KEYS[:70], []),
        ],
        "unit, NaN as a maximum": [sketch(1, 1.0, 1.0, [1100001], []), "(1,1,NaN,{1100002},{})"],
        "unit, NaN as a minimum": ["(1,NaN,NaN,{1100002},{})", sketch(1, 1.0, 1.0, [1100001], [])],
        "unit, 0 then -0": unit_runs(KEYS[:70], 1)
        + [sketch(1, -0.0, -0.0, [0], [])]
        + [sketch(1, 0.0, 0.0, [0], [])],
        "unit, -0 then 0": [sketch(1, -0.0, -0.0, [0], []), sketch(1, 0.0, 0.0, [0], [])],
        "canonical, 0 then -0": [
            sketch(140, 0.0, -0.0, KEYS[:70], [2] * 70),
            sketch(140, -0.0, 0.0, KEYS[:70], [2] * 70),
        ],
        "canonical, -0 then 0": [
            sketch(140, -0.0, 0.0, KEYS[:70], [2] * 70),
            sketch(140, 0.0, -0.0, KEYS[:70], [2] * 70),
        ],
    }


def test_the_embedded_engine_merges_in_c(
    conn: psycopg.Connection[Any], database_backend: str
) -> None:
    if database_backend != "embedded":
        pytest.skip(
            "on a server the C merge is optional (make sketch-install);"
            " this checks the embedded engine"
        )
    assert merge_language(conn) == "c", (
        "the embedded engine runs without engine/sketch/observability_sketch.tar.gz; run make setup"
    )


def test_the_c_merge_writes_the_same_sketch_as_plpgsql(c_conn: psycopg.Connection[Any]) -> None:
    for name, sketches in shapes(c_conn).items():
        c_sketch, plpgsql_sketch = both_merges(c_conn, sketches)
        assert c_sketch == plpgsql_sketch, name


def test_random_merges_agree(c_conn: psycopg.Connection[Any]) -> None:
    rng = random.Random(4)
    for case in range(40):
        groups = [
            [
                rng.lognormvariate(rng.uniform(0, 8), rng.uniform(0.01, 2))
                for _ in range(rng.choice([1, 5, 60, 400]))
            ]
            for _ in range(rng.randint(2, 9))
        ]
        sketches: list[Any] = pieces(c_conn, groups)
        if case % 3 == 0:
            sketches.insert(rng.randrange(len(sketches) + 1), None)
        c_sketch, plpgsql_sketch = both_merges(c_conn, sketches)
        assert c_sketch == plpgsql_sketch, case


def test_rollup_of_a_table_uses_the_c_merge_with_the_same_result(
    c_conn: psycopg.Connection[Any],
) -> None:
    rng = random.Random(11)
    rows = [(g, rng.lognormvariate(5, 1.5)) for g in range(30) for _ in range(rng.randint(1, 300))]
    with c_conn.transaction(force_rollback=True):
        c_conn.execute("create temporary table merge_input (g int, v float8)")
        with c_conn.cursor().copy("copy merge_input from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        mismatches = c_conn.execute(
            "with hours as ("
            "  select g, g % 4 as h, observability.percentile_agg(v) as s"
            "  from merge_input group by g, h"
            ") select h from hours group by h"
            " having observability.rollup(s)::text is distinct from"
            "   observability.sketch_merge_plpgsql(pg_catalog.array_agg(s))::text"
        ).fetchall()
    assert mismatches == []


def test_a_broken_sketch_is_a_clear_error(c_conn: psycopg.Connection[Any]) -> None:
    broken = [sketch(70, 1.0, 2.0, list(range(1100001, 1100071)), []), '(3,1,2,"{1,NULL,2}",{})']
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="must not contain NULL"):
        c_conn.execute(f"select observability.sketch_merge(%s::{SKETCHES})", [broken])
    c_conn.rollback()
    without_keys = [sketch(1, 1.0, 1.0, [1100001], []), "(1,1,1,,{})"]
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="has no keys"):
        c_conn.execute(f"select observability.sketch_merge(%s::{SKETCHES})", [without_keys])
    c_conn.rollback()


def test_a_total_past_bigint_is_out_of_range_in_both_merges(
    c_conn: psycopg.Connection[Any],
) -> None:
    huge = 9223372036854775807
    for sketches in (
        [sketch(huge, 1.0, 1.0, [1100001], [huge]), sketch(1, 1.0, 1.0, [1100001], [])],
        [
            sketch(1, 1.0, 1.0, KEYS[:70], [huge] + [0] * 69),
            sketch(1, 1.0, 1.0, KEYS[:70], [1] * 70),
        ],
    ):
        for merge in ("sketch_merge", "sketch_merge_plpgsql"):
            with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="bigint out of range"):
                c_conn.execute(f"select observability.{merge}(%s::{SKETCHES})", [sketches])
            c_conn.rollback()


def test_counts_that_do_not_match_the_keys_are_an_error(c_conn: psycopg.Connection[Any]) -> None:
    # The PL/pgSQL merge writes a sketch with more counts than keys here; the C one refuses.
    sketches = ['(3,1,2,"{1100001,1100002}","{1,1,1}")', sketch(1, 1.0, 1.0, [1100003], [])]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="has 2 keys but 3 counts"):
        c_conn.execute(f"select observability.sketch_merge(%s::{SKETCHES})", [sketches])
    c_conn.rollback()


def install_sql(old: str = "", new: str = "") -> str:
    (install,) = [f for f in discover().idempotent if f.path.name == "013-sketch-merge-in-c.sql"]
    changed = install.text.replace(old, new)
    assert changed != install.text or not old
    return changed


def recorded_notices(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(severity, message) of every notice the server sends on conn from now on."""
    messages: list[tuple[str, str]] = []
    conn.add_notice_handler(
        lambda d: messages.append((d.severity_nonlocalized or "", d.message_primary or ""))
    )
    return messages


@pytest.mark.parametrize(
    ("old", "new", "warning_parts"),
    [
        # a library without the function
        ("'sketch_merge';", "'sketch_merge_absent';", ("cannot be used", "sketch_merge_absent")),
        # the layout the install expects, changed: as if a field of the type had another type
        (
            "{bigint,float8,float8,",
            "{bigint,float4,float8,",
            ("not laid out as the C merge reads it",),
        ),
    ],
    ids=["missing-symbol", "other-layout"],
)
def test_an_unusable_library_warns_and_keeps_the_plpgsql_merge(
    conn: psycopg.Connection[Any], old: str, new: str, warning_parts: tuple[str, ...]
) -> None:
    messages = recorded_notices(conn)
    with conn.transaction(force_rollback=True):
        conn.execute(install_sql(old, new))
        assert merge_language(conn) == "plpgsql"
    assert any(
        severity == "WARNING" and all(part in text for part in warning_parts)
        for severity, text in messages
    ), messages


def test_the_database_owner_keeps_the_c_merge_a_superuser_installed(
    c_conn: psycopg.Connection[Any],
) -> None:
    owner = f"sketch_owner_{os.getpid()}"
    messages = recorded_notices(c_conn)
    with c_conn.transaction(force_rollback=True):
        c_conn.execute(f"create role {owner}")
        c_conn.execute(f"grant usage, create on schema observability to {owner}")
        c_conn.execute(f"alter function {MERGE} owner to {owner}")
        c_conn.execute(f"set local role {owner}")
        c_conn.execute(install_sql())
        assert merge_language(c_conn) == "c"
        assert any(
            severity == "NOTICE" and "kept the C sketch merge" in text
            for severity, text in messages
        ), messages
        # Where the merge is not C yet, the owner cannot make it C: a warning, and PL/pgSQL.
        c_conn.execute("reset role")
        c_conn.execute(
            install_sql("'$libdir/observability_sketch'", "'$libdir/observability_sketch_absent'")
        )
        c_conn.execute(f"set local role {owner}")
        messages.clear()
        c_conn.execute(install_sql())
        assert merge_language(c_conn) == "plpgsql"
        assert any(
            severity == "WARNING" and "cannot be used" in text for severity, text in messages
        ), messages


def test_without_the_library_the_install_keeps_the_plpgsql_merge(
    conn: psycopg.Connection[Any],
) -> None:
    missing = install_sql("'$libdir/observability_sketch'", "'$libdir/observability_sketch_absent'")
    messages = recorded_notices(conn)
    sketches = pieces(conn, sparse_values(random.Random(5), 4, 100))
    with conn.transaction(force_rollback=True):
        conn.execute(missing)
        assert merge_language(conn) == "plpgsql"
        assert any(
            "sketches merge in PL/pgSQL" in text and "observability_sketch_absent" in text
            for _, text in messages
        )
        merged, reference = both_merges(conn, sketches)
        assert merged == reference and merged is not None
