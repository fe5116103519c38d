from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors


@pytest.fixture
def table(conn: psycopg.Connection) -> Iterator[str]:
    name = f"sessions_{uuid.uuid4().hex[:10]}"
    conn.execute(f"create table public.{name} (id int primary key, who text)")
    yield f"public.{name}"
    conn.execute(f"drop table if exists public.{name}")


def connect(url: str, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, **kwargs)


def test_settings_stay_with_their_client(database_url: str) -> None:
    with connect(database_url) as a, connect(database_url) as b:
        default_timeout = b.execute("show statement_timeout").fetchone()[0]
        a.execute("set statement_timeout = '123s'")
        a.execute("set search_path = pg_catalog, public")
        assert b.execute("show statement_timeout").fetchone()[0] == default_timeout
        assert b.execute("show search_path").fetchone()[0] != "pg_catalog, public"
        b.execute("set statement_timeout = '7s'")
        assert a.execute("show statement_timeout").fetchone()[0] == "123s"
        assert a.execute("show search_path").fetchone()[0] == "pg_catalog, public"
        assert b.execute("show statement_timeout").fetchone()[0] == "7s"


def test_startup_options_apply_to_that_client_only(database_url: str) -> None:
    with (
        connect(database_url, options="-c statement_timeout=4321", application_name="probe") as a,
        connect(database_url) as b,
    ):
        assert a.execute("show statement_timeout").fetchone()[0] == "4321ms"
        assert a.execute("show application_name").fetchone()[0] == "probe"
        assert b.execute("show statement_timeout").fetchone()[0] != "4321ms"


def test_reset_all_returns_to_connection_settings(database_url: str) -> None:
    with connect(database_url, options="-c statement_timeout=4321") as a:
        search_path = a.execute("show search_path").fetchone()[0]
        a.execute("set statement_timeout = 99; set search_path = pg_catalog")
        a.execute("reset all")
        assert a.execute("show statement_timeout").fetchone()[0] == "4321ms"
        assert a.execute("show search_path").fetchone()[0] == search_path
        assert a.execute("show client_min_messages").fetchone()[0] == "notice"


def test_protocol_prepared_statements_with_equal_names(database_url: str) -> None:
    # psycopg names server-side statements _pg3_0, _pg3_1, ... on every connection.
    with (
        connect(database_url, prepare_threshold=0) as a,
        connect(database_url, prepare_threshold=0) as b,
    ):
        for i in range(5):
            assert a.execute("select %s::int + 1000", (i,)).fetchone()[0] == i + 1000
            assert b.execute("select %s::text || '-b'", (str(i),)).fetchone()[0] == f"{i}-b"
        prepared = a.execute("select count(*) from pg_prepared_statements").fetchone()[0]
        assert prepared >= 1


def test_sql_prepared_statements_are_private(database_url: str) -> None:
    with connect(database_url) as a, connect(database_url) as b:
        a.execute("prepare probe_stmt as select 'a'::text")
        with pytest.raises(errors.InvalidSqlStatementName):
            b.execute("execute probe_stmt")
        b.execute("prepare probe_stmt as select 'b'::text")
        assert a.execute("execute probe_stmt").fetchone()[0] == "a"
        assert b.execute("execute probe_stmt").fetchone()[0] == "b"


def test_temp_tables_are_private_and_dropped_at_disconnect(database_url: str) -> None:
    with connect(database_url) as a:
        a.execute("create temp table scratch (id int primary key, v text)")
        a.execute("insert into scratch values (1, 'a')")
        with connect(database_url) as b:
            with pytest.raises(errors.UndefinedTable):
                b.execute("select * from scratch")
            b.execute("create temp table scratch (id int primary key, v text)")
            b.execute("insert into scratch values (2, 'b')")
            assert b.execute("select v from scratch").fetchall() == [("b",)]
            assert a.execute("select v from scratch").fetchall() == [("a",)]
        with connect(database_url) as c, pytest.raises(errors.UndefinedTable):
            c.execute("select * from scratch")
        assert a.execute("select v from scratch").fetchall() == [("a",)]


def test_discard_all_touches_only_its_client(database_url: str) -> None:
    with connect(database_url) as a, connect(database_url) as b:
        b.execute("create temp table keep_me (id int)")
        b.execute("prepare keep_stmt as select 1")
        b.execute("set statement_timeout = '9s'")
        a.execute("create temp table drop_me (id int)")
        a.execute("set statement_timeout = '8s'")
        a.execute("discard all")
        with pytest.raises(errors.UndefinedTable):
            a.execute("select * from drop_me")
        assert a.execute("show statement_timeout").fetchone()[0] != "8s"
        assert b.execute("select count(*) from keep_me").fetchone()[0] == 0
        assert b.execute("execute keep_stmt").fetchone()[0] == 1
        assert b.execute("show statement_timeout").fetchone()[0] == "9s"


def test_advisory_locks_are_released_when_their_client_leaves(database_url: str) -> None:
    key = int(uuid.uuid4().int % 2**62)
    with connect(database_url) as a:
        assert a.execute("select pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
    with connect(database_url) as b:
        held = b.execute(
            "select count(*) from pg_locks where locktype = 'advisory'"
            " and ((classid::bigint << 32) | objid::bigint) = %s",
            (key,),
        ).fetchone()[0]
        assert held == 0


def test_uncommitted_work_is_never_seen_by_others(database_url: str, table: str) -> None:
    seen: list[int] = []
    with connect(database_url) as a, connect(database_url) as b:
        a.execute("begin")
        a.execute(f"insert into {table} values (1, 'a')")
        reader = threading.Thread(
            target=lambda: seen.append(b.execute(f"select count(*) from {table}").fetchone()[0])
        )
        reader.start()
        time.sleep(0.3)
        a.execute("rollback")
        reader.join(timeout=30)
    assert seen == [0]


def test_concurrent_writers_lose_nothing(database_url: str, table: str) -> None:
    writers, per_writer = 4, 40
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            with connect(database_url) as c:
                for i in range(per_writer):
                    with c.transaction():
                        c.execute(
                            f"insert into {table} values (%s, %s)",
                            (writer * 1000 + i, f"w{writer}"),
                        )
                        c.execute(f"select count(*) from {table}")
        except BaseException as exc:  # surfaced below with the thread's own traceback
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    with connect(database_url) as c:
        rows = c.execute(f"select who, count(*) from {table} group by who order by who").fetchall()
    assert rows == [(f"w{w}", per_writer) for w in range(writers)]


def test_client_killed_mid_transaction_is_rolled_back(database_url: str, table: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time, psycopg
        c = psycopg.connect({database_url!r})
        c.execute("insert into {table} values (99, 'doomed')")
        print("inserted", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "inserted"
        child.kill()
        child.wait(timeout=10)
        started = time.monotonic()
        with connect(database_url) as c:
            count = c.execute(f"select count(*) from {table}").fetchone()[0]
        waited = time.monotonic() - started
    finally:
        child.kill()
    assert count == 0
    assert waited < 10


def test_custom_settings_stay_with_their_client(database_url: str) -> None:
    with connect(database_url, options="-c myapp.from_startup=on") as a:
        a.execute("set myapp.from_set = 'a'")
        a.execute("select set_config('myapp.from_function', 'f', false)")
        with connect(database_url) as b:
            seen = b.execute(
                "select current_setting('myapp.from_startup', true),"
                " current_setting('myapp.from_set', true),"
                " current_setting('myapp.from_function', true)"
            ).fetchone()
            assert all(value in (None, "") for value in seen)
        mine = a.execute(
            "select current_setting('myapp.from_startup'), current_setting('myapp.from_set'),"
            " current_setting('myapp.from_function')"
        ).fetchone()
        assert mine == ("on", "a", "f")


def test_set_role_stays_with_its_client(database_url: str) -> None:
    role = f"probe_{uuid.uuid4().hex[:8]}"
    with connect(database_url) as admin:
        admin.execute(f"create role {role}")
        session_user = admin.execute("select current_user").fetchone()[0]
        try:
            with connect(database_url) as a, connect(database_url) as b:
                a.execute(f"set role {role}")
                assert b.execute("select current_user").fetchone()[0] == session_user
                assert a.execute("select current_user").fetchone()[0] == role
            with connect(database_url) as c:
                assert c.execute("select current_user").fetchone()[0] == session_user
        finally:
            admin.execute(f"drop role {role}")


def test_prepare_in_a_multi_statement_query_runs_once(database_url: str, table: str) -> None:
    with connect(database_url) as a, connect(database_url) as b:
        a.execute(f"prepare once_only as select 1; insert into {table} values (1, 'a')")
        for _ in range(3):
            b.execute("select 1")
            a.execute("select 1")
        assert a.execute("execute once_only").fetchone() == (1,)
        assert a.execute(f"select count(*) from {table}").fetchone()[0] == 1


def test_temp_views_and_sequences_go_with_their_client(database_url: str) -> None:
    with connect(database_url) as a:
        a.execute("create temp view scratch_view as select 1 as one")
        a.execute("create temp sequence scratch_seq")
    with connect(database_url) as b:
        b.execute("create temp view scratch_view as select 2 as two")
        b.execute("create temp sequence scratch_seq")
        assert b.execute("select two from scratch_view").fetchone() == (2,)
