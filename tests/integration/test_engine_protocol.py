from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors, pq
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.timeout(120)

TableFactory = Callable[[str], str]
AnyConnection = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]

UNICODE_TEXT = "héllo wörld ✓ 日本語 🚀 'quoted' \"double\" back\\slash\ttab\nnewline"

# (SQL type, value sent, value expected back); None in the middle means "same as sent".
TYPED_VALUES: list[tuple[str, Any, Any]] = [
    ("int4", 42, None),
    ("int4", -(2**31), None),
    ("int8", 2**40 + 7, None),
    ("int8", -(2**63), None),
    ("numeric", Decimal("12345678901234567890.123456789"), None),
    ("numeric", 10**30, Decimal(10**30)),
    ("float8", 1.5, None),
    ("text", UNICODE_TEXT, None),
    ("text", "", None),
    ("bytea", bytes(range(256)), None),
    ("bytea", b"", None),
    ("timestamptz", datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC), None),
    (
        "timestamptz",
        datetime(1999, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2000, 1, 1, 1, 0, tzinfo=UTC),
    ),
    ("date", date(2024, 1, 31), None),
    ("interval", timedelta(days=3, seconds=7, microseconds=5), None),
    (
        "jsonb",
        Jsonb({"a": [1, 2, {"b": None}], "ü": "✓", "n": 1.25}),
        {"a": [1, 2, {"b": None}], "ü": "✓", "n": 1.25},
    ),
    ("int8[]", [1, 2**40, -3], None),
    ("text[]", ["a", None, 'ü,"}{'], None),
    ("int4[]", [[1, 2], [3, 4]], None),
    ("bool", True, None),
    ("bool", False, None),
    ("uuid", uuid.UUID("6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f"), None),
    ("uuid[]", [uuid.UUID(int=1), uuid.UUID(int=2**128 - 1)], None),
    ("int4", None, None),
    ("text", None, None),
]
TYPED_IDS = [f"{t}-{i}" for i, (t, _, _) in enumerate(TYPED_VALUES)]


def _expected(sent: Any, back: Any) -> Any:
    return sent if back is None else back


def _same(actual: Any, expected: Any) -> bool:
    # timestamptz comes back in the session time zone; compare instants, not representations.
    return actual == expected and type(actual) is type(expected)


def _copy_rows(n: int) -> list[tuple[int, int, str]]:
    return [(i, i * 7919 % 1_000_003 - 500_000, f"row {i} ü✓") for i in range(n)]


def _checksum(rows: Sequence[tuple[int, int, str]]) -> tuple[int, int, int, str]:
    ordered = sorted(rows)
    digest = hashlib.md5(",".join(r[2] for r in ordered).encode()).hexdigest()
    return len(rows), sum(r[0] for r in rows), sum(r[1] for r in rows), digest


def _checksum_sql(table: str) -> str:
    return (
        f"select count(*), coalesce(sum(id), 0), coalesce(sum(v), 0), "
        f"md5(coalesce(string_agg(s, ',' order by id), '')) from {table}"
    )


def _as_checksum(row: tuple[Any, ...] | None) -> tuple[int, int, int, str]:
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), row[3]


@pytest.fixture
def new_table(database_url: str) -> Iterator[TableFactory]:
    created: list[str] = []

    def create(columns: str) -> str:
        name = f"proto_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(f"create table {name} ({columns})")
        created.append(name)
        return name

    yield create
    with psycopg.connect(database_url, autocommit=True) as c:
        for name in created:
            c.execute(f"drop table if exists {name}")


@pytest.fixture
def rows_table(new_table: TableFactory) -> str:
    return new_table("id int4 primary key, v int8 not null, s text not null")


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    connection = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        yield connection
    finally:
        await connection.close()


def _assert_usable(conn: psycopg.Connection) -> None:
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert conn.execute("select 1 + %s", (1,)).fetchone() == (2,)
    assert conn.execute("select 'still here'").fetchone() == ("still here",)


async def _assert_usable_async(conn: psycopg.AsyncConnection) -> None:
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    cur = await conn.execute("select 1 + %s", (1,))
    assert await cur.fetchone() == (2,)
    cur = await conn.execute("select 'still here'")
    assert await cur.fetchone() == ("still here",)


def _embedded_bug(request: pytest.FixtureRequest, backend: str, what: str) -> None:
    if backend == "embedded":
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"embedded engine: {what}"))


@contextlib.contextmanager
def _deadline(conn: AnyConnection, seconds: float) -> Iterator[None]:
    """Fail instead of hanging when the server stops answering.

    Shutting the socket down under the blocked driver makes it raise, and the server side sees
    the client leave, which frees anything the connection held.
    """
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with (
            contextlib.suppress(OSError, psycopg.Error),
            socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock,
        ):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.start()
    try:
        yield
    except psycopg.OperationalError:
        if fired.is_set():
            pytest.fail(f"no answer from the server within {seconds}s")
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        pytest.fail(f"no answer from the server within {seconds}s")


def _other_client_waits(database_url: str, seconds: float) -> bool:
    """Whether a fresh connection fails to get `select 1` answered within `seconds`."""
    answered = threading.Event()

    def probe() -> None:
        with psycopg.connect(database_url, autocommit=True) as other:
            if other.execute("select 1").fetchone() == (1,):
                answered.set()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    return not answered.wait(seconds)


# --- simple queries -------------------------------------------------------------------------


def test_simple_query_returns_rows_and_description(conn: psycopg.Connection) -> None:
    cur = conn.execute("select 1 as one, 'two'::text as two, null::int as three")
    assert cur.fetchall() == [(1, "two", None)]
    assert cur.description is not None
    assert [d.name for d in cur.description] == ["one", "two", "three"]
    assert cur.pgresult is not None
    assert cur.pgresult.fformat(0) == pq.Format.TEXT


def test_simple_query_with_several_statements(conn: psycopg.Connection) -> None:
    cur = conn.cursor()
    cur.execute("select 1; select 'a', 'b' union all select 'c', 'd'; select 3")
    assert cur.fetchall() == [(1,)]
    assert cur.nextset()
    assert cur.fetchall() == [("a", "b"), ("c", "d")]
    assert cur.nextset()
    assert cur.fetchall() == [(3,)]
    assert not cur.nextset()


def test_simple_query_error_rolls_back_the_whole_implicit_transaction(
    conn: psycopg.Connection, rows_table: str
) -> None:
    with pytest.raises(errors.DivisionByZero):
        conn.execute(
            f"insert into {rows_table} values (1, 1, 'a'); select 1 / 0; "
            f"insert into {rows_table} values (2, 2, 'b')"
        )
    _assert_usable(conn)
    assert conn.execute(f"select count(*) from {rows_table}").fetchone() == (0,)


def test_generate_series_returns_many_rows(conn: psycopg.Connection) -> None:
    rows = conn.execute("select g, repeat('x', g % 50) from generate_series(1, 20000) g").fetchall()
    assert len(rows) == 20000
    assert sum(r[0] for r in rows) == 20000 * 20001 // 2
    assert rows[-1] == (20000, "")
    assert rows[48] == (49, "x" * 49)


async def test_async_simple_queries(aconn: psycopg.AsyncConnection) -> None:
    cur = aconn.cursor()
    await cur.execute("select 1 as one; select 'ü✓'::text, null::int")
    assert await cur.fetchall() == [(1,)]
    assert cur.nextset()
    assert await cur.fetchall() == [("ü✓", None)]
    cur = await aconn.execute("select count(*) from generate_series(1, 5000)")
    assert await cur.fetchone() == (5000,)


# --- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("placeholder", ["%s", "%t", "%b"])
@pytest.mark.parametrize(("sql_type", "sent", "back"), TYPED_VALUES, ids=TYPED_IDS)
def test_parameter_round_trip(
    conn: psycopg.Connection, placeholder: str, sql_type: str, sent: Any, back: Any
) -> None:
    row = conn.execute(f"select {placeholder}::{sql_type}", (sent,)).fetchone()
    assert row is not None
    expected = _expected(sent, back)
    assert _same(row[0], expected), (row[0], expected)


def test_parameters_of_many_types_stored_and_read_back(
    conn: psycopg.Connection, new_table: TableFactory
) -> None:
    table = new_table(
        "id serial primary key, i int4, b int8, n numeric, t text, by bytea, ts timestamptz,"
        " j jsonb, ia int8[], ta text[], f bool, u uuid, nothing int4"
    )
    u = uuid.uuid4()
    ts = datetime(2023, 6, 1, 12, 30, 15, 999999, tzinfo=UTC)
    blob = bytes(range(256)) * 40
    values = (
        -7,
        9_007_199_254_740_993,
        Decimal("-0.000000000000000001"),
        UNICODE_TEXT,
        blob,
        ts,
        Jsonb({"k": ["v", 1, True, None]}),
        [2**62, None, -1],
        ["ü", "", None],
        True,
        u,
        None,
    )
    cols = "i, b, n, t, by, ts, j, ia, ta, f, u, nothing"
    inserted = conn.execute(
        f"insert into {table} ({cols}) values ({', '.join(['%s'] * 12)}) returning id", values
    ).fetchone()
    assert inserted is not None
    row = conn.execute(f"select {cols} from {table} where id = %s", inserted).fetchone()
    assert row is not None
    assert row[:6] == values[:6]
    assert row[6] == {"k": ["v", 1, True, None]}
    assert row[7:] == values[7:]
    # The server must have stored real values, not text that merely round-trips.
    facts = conn.execute(
        f"select octet_length(by), length(t), extract(epoch from ts), j->'k'->>1, ia[1],"
        f" nothing is null, u::text from {table}"
    ).fetchone()
    assert facts == (
        len(blob),
        len(UNICODE_TEXT),
        Decimal(str(ts.timestamp())),
        "1",
        2**62,
        True,
        str(u),
    )


async def test_async_parameters(aconn: psycopg.AsyncConnection) -> None:
    for sql_type, sent, back in TYPED_VALUES:
        for placeholder in ("%t", "%b"):
            cur = await aconn.execute(f"select {placeholder}::{sql_type}", (sent,))
            row = await cur.fetchone()
            assert row is not None
            assert _same(row[0], _expected(sent, back)), (sql_type, placeholder, row[0])


# --- prepared statements --------------------------------------------------------------------


def _protocol_prepared(conn: psycopg.Connection, marker: str) -> int:
    row = conn.execute(
        "select count(*) from pg_prepared_statements where not from_sql and statement like %s",
        (f"%{marker}%",),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_prepare_true_uses_a_server_side_prepared_statement(conn: psycopg.Connection) -> None:
    marker = f"m{uuid.uuid4().hex}"
    query = f"select %s::int8 * 2, %s::text || '!' /* {marker} */"
    assert _protocol_prepared(conn, marker) == 0
    for i in range(5):
        assert conn.execute(query, (i, f"x{i}"), prepare=True).fetchone() == (2 * i, f"x{i}!")
    assert _protocol_prepared(conn, marker) == 1
    conn.execute(query, (1, "y"), prepare=False)
    assert _protocol_prepared(conn, marker) == 1


def test_prepare_threshold_zero_prepares_every_query(database_url: str) -> None:
    marker = f"m{uuid.uuid4().hex}"
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=0) as c:
        query = f"select %s::numeric + 1 /* {marker} */"
        for i in range(10):
            assert c.execute(query, (Decimal(i) / 4,)).fetchone() == (Decimal(i) / 4 + 1,)
        assert _protocol_prepared(c, marker) == 1
        # A statement that fails at execution must not break the prepared statement.
        fail = f"select 10 / %s::int /* {marker}-div */"
        with pytest.raises(errors.DivisionByZero):
            c.execute(fail, (0,))
        assert c.execute(fail, (5,)).fetchone() == (2,)
        assert c.execute(fail, (2,)).fetchone() == (5,)


def test_prepared_statement_names_do_not_collide_between_clients(database_url: str) -> None:
    # Both connections name their first prepared statement _pg3_0.
    with (
        psycopg.connect(database_url, autocommit=True, prepare_threshold=0) as a,
        psycopg.connect(database_url, autocommit=True, prepare_threshold=0) as b,
    ):
        qa = "select 'a:' || %s::text"
        qb = "select %s::int4 * 1000, 'b'"
        for i in range(5):
            assert a.execute(qa, (i,)).fetchone() == (f"a:{i}",)
            assert b.execute(qb, (i,)).fetchone() == (i * 1000, "b")


@pytest.mark.parametrize("threshold", [5, 0], ids=["simple-protocol", "prepared"])
def test_deallocate_all_only_touches_own_statements(database_url: str, threshold: int) -> None:
    with (
        psycopg.connect(database_url, autocommit=True, prepare_threshold=threshold) as a,
        psycopg.connect(database_url, autocommit=True, prepare_threshold=0) as b,
    ):
        assert a.execute("select %s::int4", (1,), prepare=True).fetchone() == (1,)
        assert b.execute("select %s::int4 + 1", (1,)).fetchone() == (2,)
        a.execute("deallocate all")
        assert a.execute("select %s::int4", (3,), prepare=True).fetchone() == (3,)
        assert b.execute("select %s::int4 + 1", (3,)).fetchone() == (4,)


def test_sql_prepare_and_session_state_are_per_client(database_url: str) -> None:
    with (
        psycopg.connect(database_url, autocommit=True) as a,
        psycopg.connect(database_url, autocommit=True) as b,
    ):
        a.execute("prepare pick as select 'from a'")
        b.execute("prepare pick as select 'from b'")
        a.execute("set application_name = 'client-a'")
        b.execute("set application_name = 'client-b'")
        a.execute("create temp table scratch as select 1 as v")
        b.execute("create temp table scratch as select 2 as v")
        for _ in range(2):
            assert a.execute("execute pick").fetchone() == ("from a",)
            assert b.execute("execute pick").fetchone() == ("from b",)
            assert a.execute("select v from scratch").fetchone() == (1,)
            assert b.execute("select v from scratch").fetchone() == (2,)
            assert a.execute("show application_name").fetchone() == ("client-a",)
            assert b.execute("show application_name").fetchone() == ("client-b",)


async def test_async_prepared_statements(database_url: str) -> None:
    marker = f"m{uuid.uuid4().hex}"
    query = f"select %s::int4 + 1 /* {marker} */"
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, prepare_threshold=0
    ) as c:
        for i in range(5):
            cur = await c.execute(query, (i,))
            assert await cur.fetchone() == (i + 1,)
        cur = await c.execute(
            "select count(*) from pg_prepared_statements where not from_sql and statement like %s",
            (f"%{marker}%",),
        )
        assert await cur.fetchone() == (1,)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        for i in range(3):
            cur = await c.execute(query, (i,), prepare=True)
            assert await cur.fetchone() == (i + 1,)


# --- binary results -------------------------------------------------------------------------


def test_binary_cursor_results(conn: psycopg.Connection) -> None:
    select = ", ".join(f"%s::{t}" for t, _, _ in TYPED_VALUES)
    params = [v for _, v, _ in TYPED_VALUES]
    cur = conn.cursor(binary=True)
    cur.execute(f"select {select}", params)
    row = cur.fetchone()
    assert row is not None
    assert cur.pgresult is not None
    assert all(cur.pgresult.fformat(i) == pq.Format.BINARY for i in range(len(TYPED_VALUES)))
    for (sql_type, sent, back), got in zip(TYPED_VALUES, row, strict=True):
        assert _same(got, _expected(sent, back)), (sql_type, got)


def test_binary_cursor_over_a_table(conn: psycopg.Connection, rows_table: str) -> None:
    rows = _copy_rows(3000)
    with conn.cursor().copy(f"copy {rows_table} (id, v, s) from stdin") as copy:
        for r in rows:
            copy.write_row(r)
    cur = conn.cursor(binary=True)
    got = cur.execute(f"select id, v, s from {rows_table} order by id").fetchall()
    assert got == rows


async def test_async_binary_cursor(aconn: psycopg.AsyncConnection) -> None:
    cur = aconn.cursor(binary=True)
    await cur.execute(
        "select g, g::numeric / 8, now() - g * interval '1 day', md5(g::text)::uuid"
        " from generate_series(1, 1000) g"
    )
    rows = await cur.fetchall()
    assert cur.pgresult is not None and cur.pgresult.fformat(0) == pq.Format.BINARY
    assert len(rows) == 1000
    assert sum(r[1] for r in rows) == Decimal(1000 * 1001) / 16
    assert rows[0][3] == uuid.UUID(hashlib.md5(b"1").hexdigest())


# --- pipelines ------------------------------------------------------------------------------

PIPELINE_ROWS = 10_000


def test_executemany_pipeline_10k_rows(database_url: str, rows_table: str) -> None:
    assert psycopg.Pipeline.is_supported()
    rows = _copy_rows(PIPELINE_ROWS)
    with psycopg.connect(database_url, autocommit=True) as c:
        with _deadline(c, 20), c.cursor() as cur:
            cur.executemany(f"insert into {rows_table} (id, v, s) values (%s, %s, %s)", rows)
            assert cur.rowcount == PIPELINE_ROWS
        assert _as_checksum(c.execute(_checksum_sql(rows_table)).fetchone()) == _checksum(rows)


def test_extended_messages_ending_on_8k_boundaries(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as c, _deadline(c, 10):
        # Parse, Bind, Describe, Execute and Sync go out in one write; across these lengths every
        # one of those messages ends exactly on the 8 KiB and on the 16 KiB mark once.
        for n in [*range(8064, 8256), *range(16256, 16448)]:
            assert c.execute("select length(%s::text)", ("x" * n,)).fetchone() == (n,)


def test_executemany_returning(database_url: str, rows_table: str) -> None:
    rows = _copy_rows(100)
    with psycopg.connect(database_url, autocommit=True) as c, c.cursor() as cur:
        cur.executemany(
            f"insert into {rows_table} (id, v, s) values (%s, %s, %s) returning id * 2",
            rows,
            returning=True,
        )
        doubled = []
        while True:
            doubled.extend(r[0] for r in cur.fetchall())
            if not cur.nextset():
                break
        assert doubled == [r[0] * 2 for r in rows]


def test_explicit_pipeline_with_several_statements(database_url: str, rows_table: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as c:
        with c.pipeline() as p:
            ins = c.execute(
                f"insert into {rows_table} values (%s, %s, %s), (%s, %s, %s) returning id",
                (1, 10, "one", 2, 20, "two"),
            )
            upd = c.execute(f"update {rows_table} set v = v + %s where id = %s", (5, 1))
            sel = c.execute(f"select id, v, s from {rows_table} order by id")
            p.sync()
            cnt = c.execute(f"select count(*), %s::text from {rows_table}", ("after sync",))
            prepared = [
                c.execute("select %s::int4 * %s::int4", (i, i), prepare=True) for i in range(5)
            ]
        assert ins.fetchall() == [(1,), (2,)]
        assert upd.rowcount == 1
        assert sel.fetchall() == [(1, 15, "one"), (2, 20, "two")]
        assert cnt.fetchone() == (2, "after sync")
        assert [cur.fetchone() for cur in prepared] == [(i * i,) for i in range(5)]


def test_pipeline_error_aborts_until_sync(database_url: str, rows_table: str) -> None:
    insert = f"insert into {rows_table} values (%s, %s, %s)"
    with psycopg.connect(database_url, autocommit=True) as c:
        with pytest.raises(errors.DivisionByZero), c.pipeline():
            c.execute(insert, (1, 1, "a"))
            c.execute("select 1 / %s::int", (0,))
            c.execute(insert, (2, 2, "b"))
        _assert_usable(c)
        # Everything up to the Sync formed one implicit transaction: the first insert is gone.
        assert c.execute(f"select count(*) from {rows_table}").fetchone() == (0,)
        with c.pipeline() as p:
            c.execute(insert, (1, 1, "a"))
            p.sync()
            with pytest.raises(errors.UniqueViolation):
                c.execute(insert, (1, 1, "a"))
                p.sync()
            c.execute(insert, (3, 3, "c"))
        rows = c.execute(f"select array_agg(id order by id) from {rows_table}").fetchone()
        assert rows == ([1, 3],)


@pytest.mark.parametrize("how", ["pipeline", "executemany"])
def test_pipeline_leaves_the_backend_to_other_clients(
    database_url: str, rows_table: str, how: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as c:
        if how == "pipeline":
            with c.pipeline():
                c.execute(f"insert into {rows_table} values (%s, %s, %s)", (1, 1, "a"))
        else:
            c.cursor().executemany(f"insert into {rows_table} values (%s, %s, %s)", _copy_rows(10))
        assert c.info.transaction_status == pq.TransactionStatus.IDLE
        waited = _other_client_waits(database_url, 2)
    assert not waited, "another client could not run a query while this one sat idle"


async def test_async_executemany_pipeline_10k_rows(database_url: str, rows_table: str) -> None:
    rows = _copy_rows(PIPELINE_ROWS)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        with _deadline(c, 20):
            async with c.cursor() as cur:
                await cur.executemany(
                    f"insert into {rows_table} (id, v, s) values (%s, %s, %s)", rows
                )
        cur = await c.execute(_checksum_sql(rows_table))
        assert _as_checksum(await cur.fetchone()) == _checksum(rows)


async def test_async_explicit_pipeline(database_url: str, rows_table: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        async with c.pipeline() as p:
            await c.execute(f"insert into {rows_table} values (%s, %s, %s)", (1, 100, "x"))
            upd = await c.execute(f"update {rows_table} set s = s || %s returning s", ("y",))
            sel = await c.execute(f"select sum(v) from {rows_table}")
            await p.sync()
            after = await c.execute("select %s::text", ("done",))
        assert await upd.fetchall() == [("xy",)]
        assert await sel.fetchone() == (100,)
        assert await after.fetchone() == ("done",)


async def test_async_pipeline_leaves_the_backend_to_other_clients(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        async with c.pipeline():
            await c.execute("select %s::int", (1,))
        waited = await asyncio.to_thread(_other_client_waits, database_url, 2)
    assert not waited, "another client could not run a query while this one sat idle"


# --- COPY -----------------------------------------------------------------------------------

COPY_ROWS = 100_000


def test_copy_from_stdin_text(conn: psycopg.Connection, rows_table: str) -> None:
    rows = _copy_rows(COPY_ROWS)
    with conn.cursor() as cur:
        with cur.copy(f"copy {rows_table} (id, v, s) from stdin") as copy:
            for r in rows:
                copy.write_row(r)
        assert cur.rowcount == COPY_ROWS
    assert _as_checksum(conn.execute(_checksum_sql(rows_table)).fetchone()) == _checksum(rows)


def test_copy_from_stdin_binary(conn: psycopg.Connection, rows_table: str) -> None:
    rows = _copy_rows(COPY_ROWS)
    with conn.cursor() as cur:
        with cur.copy(f"copy {rows_table} (id, v, s) from stdin (format binary)") as copy:
            copy.set_types(["int4", "int8", "text"])
            for r in rows:
                copy.write_row(r)
        assert cur.rowcount == COPY_ROWS
    assert _as_checksum(conn.execute(_checksum_sql(rows_table)).fetchone()) == _checksum(rows)


def test_copy_from_stdin_raw_blocks_and_csv_options(
    conn: psycopg.Connection, rows_table: str
) -> None:
    rows = _copy_rows(20_000)
    data = "".join(f'{i}|{v}|"{s}, with ""quote"""\n' for i, v, s in rows).encode()
    with conn.cursor() as cur:
        # Parameters of cursor.copy() are merged on the client, so this stays a plain COPY.
        with cur.copy(f"copy {rows_table} from stdin (format csv, delimiter %s)", ("|",)) as copy:
            # Blocks cut through multibyte characters and rows alike.
            for start in range(0, len(data), 7777):
                copy.write(data[start : start + 7777])
        assert cur.rowcount == 20_000
    expected = [(i, v, f'{s}, with "quote"') for i, v, s in rows]
    assert _as_checksum(conn.execute(_checksum_sql(rows_table)).fetchone()) == _checksum(expected)


def test_copy_from_stdin_into_a_quoted_qualified_table(conn: psycopg.Connection) -> None:
    name = f"Proto Mixed {uuid.uuid4().hex[:8]}"
    conn.execute(f'create table public."{name}" ("Id" int primary key, "the text" text)')
    try:
        with conn.cursor().copy(f'COPY public."{name}" ("Id", "the text") FROM STDIN') as copy:
            copy.write_row((1, "one"))
            copy.write_row((2, None))
        rows = conn.execute(f'select * from public."{name}" order by 1').fetchall()
        assert rows == [(1, "one"), (2, None)]
    finally:
        conn.execute(f'drop table public."{name}"')


@pytest.mark.parametrize(
    "template",
    [
        "copy {table} from stdin (format csv, delimiter ';')",
        "-- load rows\ncopy {table} from stdin",
        "/* load */ copy {table} from stdin",
    ],
    ids=["semicolon-delimiter", "line-comment", "block-comment"],
)
def test_copy_from_stdin_statement_text_variants(
    request: pytest.FixtureRequest,
    database_backend: str,
    conn: psycopg.Connection,
    rows_table: str,
    template: str,
) -> None:
    sep = b";" if "delimiter" in template else b"\t"
    with conn.cursor().copy(template.format(table=rows_table)) as copy:
        copy.write(sep.join([b"1", b"2", b"three"]) + b"\n")
    assert conn.execute(f"select * from {rows_table}").fetchall() == [(1, 2, "three")]


def test_copy_from_stdin_inside_a_transaction(database_url: str, rows_table: str) -> None:
    with psycopg.connect(database_url) as c:
        c.execute(f"insert into {rows_table} values (0, 0, 'first')")
        with c.cursor().copy(f"copy {rows_table} from stdin") as copy:
            copy.write_row((1, 1, "second"))
        assert c.info.transaction_status == pq.TransactionStatus.INTRANS
        c.rollback()
        assert c.execute(f"select count(*) from {rows_table}").fetchone() == (0,)
        with c.cursor().copy(f"copy {rows_table} from stdin") as copy:
            copy.write_row((1, 1, "second"))
        c.commit()
    with psycopg.connect(database_url) as c:
        assert c.execute(f"select s from {rows_table}").fetchall() == [("second",)]


def test_copy_to_stdout(conn: psycopg.Connection, rows_table: str) -> None:
    rows = _copy_rows(20_000)
    with conn.cursor().copy(f"copy {rows_table} from stdin") as copy:
        for r in rows:
            copy.write_row(r)
    with conn.cursor() as cur:
        with cur.copy(f"copy (select id, v, s from {rows_table} order by id) to stdout") as copy:
            text = b"".join(bytes(chunk) for chunk in copy).decode()
        assert cur.rowcount == 20_000
    lines = text.splitlines()
    assert len(lines) == 20_000
    parsed = [(int(i), int(v), s) for i, v, s in (line.split("\t") for line in lines)]
    assert parsed == rows

    with conn.cursor().copy(f"copy {rows_table} to stdout (format binary)") as copy:
        copy.set_types(["int4", "int8", "text"])
        binary_rows = list(copy.rows())
    assert sorted(binary_rows) == rows


def test_copy_from_stdin_with_a_bad_row(conn: psycopg.Connection, rows_table: str) -> None:
    good = [(i, i, f"ok {i}") for i in range(1000)]
    with (
        pytest.raises(errors.InvalidTextRepresentation) as info,
        conn.cursor().copy(f"copy {rows_table} (id, v, s) from stdin") as copy,
    ):
        for r in good:
            copy.write_row(r)
        copy.write(b"1001\tnot a number\tbad\n")
        for r in good:
            copy.write_row((r[0] + 2000, r[1], r[2]))
    assert info.value.diag.sqlstate == "22P02"
    _assert_usable(conn)
    assert conn.execute(f"select count(*) from {rows_table}").fetchone() == (0,)
    with conn.cursor().copy(f"copy {rows_table} (id, v, s) from stdin") as copy:
        copy.write_row((1, 2, "three"))
    assert conn.execute(f"select * from {rows_table}").fetchall() == [(1, 2, "three")]


def test_copy_aborted_by_the_client(conn: psycopg.Connection, rows_table: str) -> None:
    with (
        pytest.raises(ZeroDivisionError),
        conn.cursor().copy(f"copy {rows_table} from stdin") as copy,
    ):
        copy.write_row((1, 1, "a"))
        raise ZeroDivisionError
    _assert_usable(conn)
    assert conn.execute(f"select count(*) from {rows_table}").fetchone() == (0,)


def test_copy_with_a_bad_row_inside_a_transaction(database_url: str, rows_table: str) -> None:
    with psycopg.connect(database_url) as c:
        c.execute(f"insert into {rows_table} values (0, 0, 'first')")
        with (
            pytest.raises(errors.UniqueViolation),
            c.cursor().copy(f"copy {rows_table} from stdin") as copy,
        ):
            copy.write_row((0, 0, "duplicate"))
        assert c.info.transaction_status == pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("select 1")
        c.rollback()
        assert c.execute(f"select count(*) from {rows_table}").fetchone() == (0,)


def test_copy_from_stdin_over_extended_protocol_is_refused(
    conn: psycopg.Connection, database_backend: str, database_url: str, rows_table: str
) -> None:
    if database_backend != "embedded":
        pytest.skip("PostgreSQL itself accepts COPY FROM STDIN in the extended protocol")
    attempts: list[tuple[str, Any, dict[str, Any]]] = [
        (f"copy {rows_table} from stdin", None, {"binary": True}),
        (f"copy {rows_table} from stdin", None, {"prepare": True}),
        (f"copy {rows_table} (id, v, s) from stdin where id > %s", (0,), {}),
    ]
    for sql, params, kwargs in attempts:
        started = time.monotonic()
        with pytest.raises(errors.FeatureNotSupported) as info:
            conn.execute(sql, params, **kwargs)
        assert time.monotonic() - started < 5
        assert info.value.diag.sqlstate == "0A000"
        _assert_usable(conn)
    with psycopg.connect(database_url) as c:
        c.execute(f"insert into {rows_table} values (1, 1, 'a')")
        with pytest.raises(errors.FeatureNotSupported):
            c.execute(f"copy {rows_table} from stdin", binary=True)
        assert c.info.transaction_status == pq.TransactionStatus.INERROR
        c.rollback()
        _assert_usable(c)
    assert conn.execute(f"select count(*) from {rows_table}").fetchone() == (0,)


async def test_async_copy_text_and_binary(aconn: psycopg.AsyncConnection, rows_table: str) -> None:
    text_rows = _copy_rows(COPY_ROWS)
    binary_rows = [(i + COPY_ROWS, v, s) for i, v, s in _copy_rows(COPY_ROWS)]
    cur = aconn.cursor()
    async with cur.copy(f"copy {rows_table} (id, v, s) from stdin") as copy:
        for r in text_rows:
            await copy.write_row(r)
    assert cur.rowcount == COPY_ROWS
    async with cur.copy(f"copy {rows_table} (id, v, s) from stdin (format binary)") as copy:
        copy.set_types(["int4", "int8", "text"])
        for r in binary_rows:
            await copy.write_row(r)
    assert cur.rowcount == COPY_ROWS
    await cur.execute(_checksum_sql(rows_table))
    assert _as_checksum(await cur.fetchone()) == _checksum(text_rows + binary_rows)

    async with cur.copy(f"copy (select * from {rows_table} where id < 100) to stdout") as copy:
        out = b"".join([bytes(chunk) async for chunk in copy])
    assert out.decode().splitlines()[:2] == ["0\t-500000\trow 0 ü✓", "1\t-492081\trow 1 ü✓"]
    async with cur.copy(f"copy {rows_table} to stdout (format binary)") as copy:
        copy.set_types(["int4", "int8", "text"])
        assert len([row async for row in copy.rows()]) == 2 * COPY_ROWS

    with pytest.raises(errors.InvalidTextRepresentation):
        async with cur.copy(f"copy {rows_table} (id, v, s) from stdin") as copy:
            await copy.write(b"999999\tbad\tbad\n")
    await _assert_usable_async(aconn)
    await cur.execute(f"select count(*) from {rows_table}")
    assert await cur.fetchone() == (2 * COPY_ROWS,)


async def test_async_embedded_refusals(
    aconn: psycopg.AsyncConnection, database_backend: str, rows_table: str
) -> None:
    if database_backend != "embedded":
        pytest.skip("refusals of the embedded engine only")
    started = time.monotonic()
    with pytest.raises(errors.FeatureNotSupported) as info:
        await aconn.execute(f"copy {rows_table} from stdin", binary=True)
    assert time.monotonic() - started < 5
    assert info.value.diag.sqlstate == "0A000"
    await _assert_usable_async(aconn)
    attempts: list[tuple[str, tuple[int, ...] | None]] = [
        ("select pg_read_binary_file('/dev/blob')", None),
        ("select pg_read_binary_file('/dev/blob'), %s::int", (1,)),
    ]
    for sql, params in attempts:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            await aconn.execute(sql, params)
        assert info.value.diag.sqlstate == "42501"
        await _assert_usable_async(aconn)


# --- large statements -----------------------------------------------------------------------

BIG = 2 * 1024 * 1024


def _big_text() -> str:
    # Not a repetition of one short pattern, so truncation or reordering shows in the digest.
    return "".join(f"{i:07d}é" for i in range(BIG // 9 + 1))[: BIG // 2] + "ü" * (BIG // 4)


def test_two_megabyte_statement_as_literal_sql(conn: psycopg.Connection) -> None:
    text = _big_text()
    assert len(text.encode()) >= BIG
    row = conn.execute(f"select length('{text}'), md5('{text}')").fetchone()
    assert row == (len(text), hashlib.md5(text.encode()).hexdigest())


def test_two_megabyte_parameters(conn: psycopg.Connection) -> None:
    text = _big_text()
    blob = hashlib.sha512(b"seed").digest() * (BIG // 64)
    row = conn.execute(
        "select length(%s::text), md5(%s::text), length(%b::bytea), md5(%b::bytea)",
        (text, text, blob, blob),
    ).fetchone()
    assert row == (
        len(text),
        hashlib.md5(text.encode()).hexdigest(),
        len(blob),
        hashlib.md5(blob).hexdigest(),
    )


def test_two_megabyte_value_stored_and_returned(
    conn: psycopg.Connection, new_table: TableFactory
) -> None:
    table = new_table("id int primary key, t text, b bytea")
    text = _big_text()
    blob = bytes(range(256)) * (BIG // 256)
    conn.execute(f"insert into {table} values (1, %s, %s)", (text, blob))
    assert conn.execute(f"select t, b from {table}").fetchone() == (text, blob)
    cur = conn.cursor(binary=True)
    assert cur.execute(f"select t, b from {table}").fetchone() == (text, blob)


async def test_async_two_megabyte_statement(aconn: psycopg.AsyncConnection) -> None:
    text = _big_text()
    digest = hashlib.md5(text.encode()).hexdigest()
    cur = await aconn.execute(f"select md5('{text}')")
    assert await cur.fetchone() == (digest,)
    cur = await aconn.execute("select md5(%s), %s", (text, text))
    assert await cur.fetchone() == (digest, text)


# --- errors ---------------------------------------------------------------------------------

ERROR_CASES = [
    ("select 1 / 0", None, errors.DivisionByZero, "22012"),
    ("select %s::int / 0", (1,), errors.DivisionByZero, "22012"),
    ("insert into {table} values (1, 1, 'dup')", None, errors.UniqueViolation, "23505"),
    ("insert into {table} values (%s, %s, %s)", (1, 1, "dup"), errors.UniqueViolation, "23505"),
    ("selec 1", None, errors.SyntaxError, "42601"),
    ("selec %s", (1,), errors.SyntaxError, "42601"),
    ("select * from no_such_table_here", None, errors.UndefinedTable, "42P01"),
    ("select %s::int", ("nope",), errors.InvalidTextRepresentation, "22P02"),
]
ERROR_IDS = [
    "div0-simple",
    "div0-extended",
    "unique-simple",
    "unique-extended",
    "syntax-simple",
    "syntax-extended",
    "undefined-table",
    "bad-parameter",
]


@pytest.mark.parametrize(("sql", "params", "exc", "sqlstate"), ERROR_CASES, ids=ERROR_IDS)
def test_error_leaves_connection_usable(
    conn: psycopg.Connection,
    rows_table: str,
    sql: str,
    params: tuple[Any, ...] | None,
    exc: type[psycopg.Error],
    sqlstate: str,
) -> None:
    conn.execute(f"insert into {rows_table} values (1, 1, 'original')")
    for _ in range(2):
        with pytest.raises(exc) as info:
            conn.execute(sql.format(table=rows_table), params)
        assert info.value.diag.sqlstate == sqlstate
        assert info.value.diag.message_primary
        _assert_usable(conn)
    assert conn.execute(f"select id, s from {rows_table}").fetchall() == [(1, "original")]


def test_error_with_prepare_true_leaves_connection_usable(conn: psycopg.Connection) -> None:
    for divisor in (0, 0, 2, 0, 4):
        if divisor == 0:
            with pytest.raises(errors.DivisionByZero):
                conn.execute("select 8 / %s::int", (divisor,), prepare=True)
        else:
            assert conn.execute("select 8 / %s::int", (divisor,), prepare=True).fetchone() == (
                8 // divisor,
            )
    _assert_usable(conn)


async def test_async_errors(aconn: psycopg.AsyncConnection, rows_table: str) -> None:
    await aconn.execute(f"insert into {rows_table} values (1, 1, 'x')")
    for sql, params, exc, sqlstate in ERROR_CASES:
        with pytest.raises(exc) as info:
            await aconn.execute(sql.format(table=rows_table), params)
        assert info.value.diag.sqlstate == sqlstate
        await _assert_usable_async(aconn)


# --- transactions ---------------------------------------------------------------------------


def _ids(database_url: str, table: str) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as c:
        return [r[0] for r in c.execute(f"select id from {table} order by id")]


def test_commit_persists_and_rollback_discards(database_url: str, rows_table: str) -> None:
    with psycopg.connect(database_url) as c:
        c.execute(f"insert into {rows_table} values (1, 1, 'a')")
        c.execute(f"insert into {rows_table} values (%s, %s, %s)", (2, 2, "b"))
        assert c.info.transaction_status == pq.TransactionStatus.INTRANS
        c.commit()
        c.execute(f"insert into {rows_table} values (3, 3, 'c')")
        c.execute(f"update {rows_table} set s = 'changed'")
        assert c.execute(f"select count(*) from {rows_table}").fetchone() == (3,)
        c.rollback()
        assert c.info.transaction_status == pq.TransactionStatus.IDLE
    assert _ids(database_url, rows_table) == [1, 2]
    with psycopg.connect(database_url, autocommit=True) as c:
        assert c.execute(f"select distinct s from {rows_table} order by s").fetchall() == [
            ("a",),
            ("b",),
        ]


def test_error_inside_transaction_fails_it_until_rollback(
    database_url: str, rows_table: str
) -> None:
    with psycopg.connect(database_url) as c:
        c.execute(f"insert into {rows_table} values (1, 1, 'a')")
        with pytest.raises(errors.DivisionByZero):
            c.execute("select 1 / %s::int", (0,))
        assert c.info.transaction_status == pq.TransactionStatus.INERROR
        for sql in ("select 1", f"insert into {rows_table} values (2, 2, 'b')"):
            with pytest.raises(errors.InFailedSqlTransaction) as info:
                c.execute(sql)
            assert info.value.diag.sqlstate == "25P02"
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("select %s::int", (1,))
        c.rollback()
        assert c.execute("select 'ok'").fetchone() == ("ok",)
        c.commit()
    assert _ids(database_url, rows_table) == []


def test_commit_of_a_failed_transaction_rolls_back(database_url: str, rows_table: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("begin")
        c.execute(f"insert into {rows_table} values (1, 1, 'a')")
        with pytest.raises(errors.SyntaxError):
            c.execute("this is not sql")
        assert c.execute("commit").statusmessage == "ROLLBACK"
        assert c.info.transaction_status == pq.TransactionStatus.IDLE
    assert _ids(database_url, rows_table) == []


def test_transaction_blocks_and_savepoints(conn: psycopg.Connection, rows_table: str) -> None:
    insert = f"insert into {rows_table} values (%s, %s, %s)"
    with conn.transaction():
        conn.execute(insert, (1, 1, "outer"))
        with pytest.raises(errors.UniqueViolation), conn.transaction():
            conn.execute(insert, (2, 2, "inner, rolled back"))
            conn.execute(insert, (1, 1, "duplicate"))
        with conn.transaction():
            conn.execute(insert, (3, 3, "inner, kept"))
        with conn.transaction() as inner:
            conn.execute(insert, (4, 4, "inner, discarded"))
            raise psycopg.Rollback(inner)
    assert conn.execute(f"select id, s from {rows_table} order by id").fetchall() == [
        (1, "outer"),
        (3, "inner, kept"),
    ]
    with pytest.raises(ValueError), conn.transaction():
        conn.execute(insert, (5, 5, "lost"))
        raise ValueError
    _assert_usable(conn)
    assert conn.execute(f"select count(*) from {rows_table}").fetchone() == (2,)


def test_sql_savepoints_recover_a_failed_transaction(database_url: str, rows_table: str) -> None:
    with psycopg.connect(database_url) as c:
        c.execute(f"insert into {rows_table} values (1, 1, 'a')")
        c.execute("savepoint s1")
        c.execute(f"insert into {rows_table} values (2, 2, 'b')")
        with pytest.raises(errors.DivisionByZero):
            c.execute("select 1 / 0")
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("select 1")
        c.execute("rollback to savepoint s1")
        c.execute(f"insert into {rows_table} values (%s, %s, %s)", (3, 3, "c"))
        c.execute("savepoint s2")
        with pytest.raises(errors.UniqueViolation):
            c.execute(f"insert into {rows_table} values (%s, %s, %s)", (3, 3, "c"))
        c.execute("rollback to s2")
        c.execute("release savepoint s2")
        c.commit()
    assert _ids(database_url, rows_table) == [1, 3]


async def test_async_transactions_and_savepoints(database_url: str, rows_table: str) -> None:
    insert = f"insert into {rows_table} values (%s, %s, %s)"
    async with await psycopg.AsyncConnection.connect(database_url) as c:
        await c.execute(insert, (1, 1, "a"))
        await c.commit()
        await c.execute(insert, (2, 2, "b"))
        await c.rollback()
        await c.execute(insert, (3, 3, "c"))
        with pytest.raises(errors.DivisionByZero):
            await c.execute("select 1 / 0")
        with pytest.raises(errors.InFailedSqlTransaction):
            await c.execute("select 1")
        await c.rollback()
        async with c.transaction():
            await c.execute(insert, (4, 4, "d"))
            with pytest.raises(errors.UniqueViolation):
                async with c.transaction():
                    await c.execute(insert, (5, 5, "e"))
                    await c.execute(insert, (4, 4, "dup"))
        await c.commit()
    assert _ids(database_url, rows_table) == [1, 4]


# --- /dev/blob ------------------------------------------------------------------------------


def test_dev_blob_is_rejected(
    conn: psycopg.Connection, database_backend: str, database_url: str, rows_table: str
) -> None:
    if database_backend != "embedded":
        pytest.skip("only the embedded engine reserves /dev/blob")
    attempts: list[tuple[str, Any]] = [
        ("select pg_read_binary_file('/dev/blob')", None),
        ("select pg_read_binary_file('/dev/blob') where %s", (True,)),
        (f"copy {rows_table} from '/dev/blob'", None),
        ("select 1 -- /DEV/BLOB in a comment", None),
    ]
    for sql, params in attempts:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute(sql, params)
        assert info.value.diag.sqlstate == "42501"
        _assert_usable(conn)
    with psycopg.connect(database_url) as c:
        c.execute(f"insert into {rows_table} values (1, 1, 'a')")
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("select pg_read_binary_file(%s || '/dev/blob')", ("",))
        assert c.info.transaction_status == pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("select 1")
        c.rollback()
    assert conn.execute(f"select count(*) from {rows_table}").fetchone() == (0,)


# --- server-side cursors --------------------------------------------------------------------


def test_sql_cursor_fetches_5000_rows_in_batches(database_url: str) -> None:
    name = f"sqlcur_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url) as c:
        c.execute(
            f"declare {name} scroll cursor for"
            " select g, md5(g::text) from generate_series(1, 5000) g order by g"
        )
        seen: list[tuple[int, str]] = []
        while batch := c.execute(f"fetch forward 700 from {name}").fetchall():
            seen.extend(batch)
        assert [r[0] for r in seen] == list(range(1, 5001))
        assert seen[4999] == (5000, hashlib.md5(b"5000").hexdigest())
        c.execute(f"move absolute 100 in {name}")
        assert c.execute(f"fetch 1 from {name}").fetchone() == (
            101,
            hashlib.md5(b"101").hexdigest(),
        )
        c.execute(f"close {name}")
        c.commit()


# A documented limit of the embedded engine (docs/embedded-engine.md): one backend, one cursor
# namespace.
HOLD_BUG = "WITH HOLD cursor names are shared by all clients"


def test_holdable_cursors_are_closed_when_their_client_leaves(database_url: str) -> None:
    name = f"held_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as a:
        a.execute(f"declare {name} cursor with hold for select g from generate_series(1, 9) g")
        with psycopg.connect(database_url, autocommit=True) as b:
            b.execute("select 1")
        assert a.execute(f"fetch 2 from {name}").fetchall() == [(1,), (2,)]
    with psycopg.connect(database_url, autocommit=True) as c:
        count = c.execute("select count(*) from pg_cursors where name = %s", (name,)).fetchone()
        assert count == (0,)


def test_sql_holdable_cursors_are_private_to_their_client(
    request: pytest.FixtureRequest, database_backend: str, database_url: str
) -> None:
    _embedded_bug(request, database_backend, HOLD_BUG)
    name = f"held_{uuid.uuid4().hex[:8]}"
    with (
        psycopg.connect(database_url, autocommit=True) as a,
        psycopg.connect(database_url, autocommit=True) as b,
    ):
        a.execute(f"declare {name} cursor with hold for select g from generate_series(1, 9) g")
        assert b.execute("select count(*) from pg_cursors where name = %s", (name,)).fetchone() == (
            0,
        )
        b.execute(f"declare {name} cursor with hold for select -g from generate_series(1, 9) g")
        assert a.execute(f"fetch 2 from {name}").fetchall() == [(1,), (2,)]
        assert b.execute(f"fetch 2 from {name}").fetchall() == [(-1,), (-2,)]
    with psycopg.connect(database_url, autocommit=True) as c:
        assert c.execute("select count(*) from pg_cursors where name = %s", (name,)).fetchone() == (
            0,
        )


def test_named_cursor_streams_5000_rows(
    request: pytest.FixtureRequest, database_backend: str, database_url: str
) -> None:
    name = f"cur_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url) as c, c.cursor(name) as cur:
        cur.itersize = 400
        cur.execute(
            "select g, md5(g::text), g::numeric / 3 from generate_series(1, %s) g order by g",
            (5000,),
        )
        seen = []
        open_cursors: set[str] = set()
        for i, row in enumerate(cur):
            seen.append(row)
            if i in (0, 2500):
                open_cursors.update(
                    r[0] for r in c.execute("select name from pg_cursors where not is_holdable")
                )
        assert name in open_cursors
        assert [r[0] for r in seen] == list(range(1, 5001))
        assert seen[41] == (42, hashlib.md5(b"42").hexdigest(), Decimal(42) / 3)


def test_named_cursor_fetchmany_and_binary(
    request: pytest.FixtureRequest, database_backend: str, database_url: str
) -> None:
    with psycopg.connect(database_url) as c:
        cur = c.cursor(f"cur_{uuid.uuid4().hex[:8]}", binary=True, scrollable=True)
        cur.execute("select g, g * 1.5::float8 from generate_series(1, 5000) g")
        batches = 0
        total = 0
        while batch := cur.fetchmany(777):
            batches += 1
            total += sum(r[0] for r in batch)
        assert (batches, total) == (7, 5000 * 5001 // 2)
        cur.scroll(4990, mode="absolute")
        assert cur.fetchone() == (4991, 4991 * 1.5)
        cur.close()
        c.commit()


def test_holdable_named_cursors_of_two_clients(
    request: pytest.FixtureRequest, database_backend: str, database_url: str
) -> None:
    _embedded_bug(request, database_backend, HOLD_BUG)
    name = f"held_{uuid.uuid4().hex[:8]}"
    with (
        psycopg.connect(database_url, autocommit=True) as a,
        psycopg.connect(database_url, autocommit=True) as b,
    ):
        ca = a.cursor(name, withhold=True)
        cb = b.cursor(name, withhold=True)
        ca.execute("select g from generate_series(1, 5000) g")
        cb.execute("select -g from generate_series(1, 5000) g")
        got_a: list[int] = []
        got_b: list[int] = []
        while True:
            rows_a = ca.fetchmany(500)
            rows_b = cb.fetchmany(500)
            if not rows_a and not rows_b:
                break
            got_a.extend(r[0] for r in rows_a)
            got_b.extend(r[0] for r in rows_b)
        ca.close()
        cb.close()
        assert got_a == list(range(1, 5001))
        assert got_b == [-g for g in range(1, 5001)]


async def test_async_named_cursor(
    request: pytest.FixtureRequest, database_backend: str, database_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as c:
        async with c.cursor(f"cur_{uuid.uuid4().hex[:8]}") as cur:
            cur.itersize = 250
            await cur.execute("select g, g::text from generate_series(1, 5000) g")
            seen = [row async for row in cur]
        assert len(seen) == 5000
        assert seen[-1] == (5000, "5000")
        assert sum(r[0] for r in seen) == 5000 * 5001 // 2
