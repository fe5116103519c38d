from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.sql_catalog import declared_names
from worker.schema.sqlfiles import SQL_DIR, SqlLayoutError, check_names, discover, split_statements


def test_repository_sql_follows_the_naming_rules() -> None:
    layout = discover()
    assert layout.head.name == "head.sql"
    for files in (layout.incremental, layout.idempotent):
        assert [f.number for f in files] == list(range(1, len(files) + 1))
    assert layout.incremental, "no incremental files"


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["001-a.sql", "003-b.sql"], "go up by one"),
        (["002-a.sql"], "start at 001"),
        (["001-a.sql", "001-b.sql"], "go up by one"),
        (["1-a.sql"], "001-lowercase-words.sql"),
        (["001-Traces.sql"], "001-lowercase-words.sql"),
        (["001_traces.sql"], "001-lowercase-words.sql"),
        (["001-traces.SQL"], "001-lowercase-words.sql"),
        (["001-traces.sql", "notes.txt"], "001-lowercase-words.sql"),
    ],
)
def test_bad_names_are_refused(names: list[str], problem: str) -> None:
    with pytest.raises(SqlLayoutError, match=problem):
        check_names("incremental", names)


def test_good_names_pass() -> None:
    check_names("incremental", ["002-spans.sql", "001-traces.sql", "003-chat-messages.sql"])
    check_names("idempotent", [])


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "sql"
    shutil.copytree(SQL_DIR, target)
    return target


def test_discover_refuses_stray_entries(tmp_path: Path) -> None:
    sql_dir = _copy(tmp_path)
    (sql_dir / "fixes.sql").write_text("select 1;")
    with pytest.raises(SqlLayoutError, match="fixes.sql"):
        discover(sql_dir)


def test_discover_refuses_a_gap(tmp_path: Path) -> None:
    sql_dir = _copy(tmp_path)
    last = sorted((sql_dir / "incremental").iterdir())[-1]
    last.rename(last.with_name(f"{int(last.name[:3]) + 1:03d}{last.name[3:]}"))
    with pytest.raises(SqlLayoutError, match="go up by one"):
        discover(sql_dir)


QUALIFIED_REFERENCES = [
    r"\bcreate\s+table\s+(?:if\s+not\s+exists\s+)?([\w.]+)",
    r"\bcreate\s+(?:unique\s+)?index\s+\w+\s+on\s+([\w.]+)",
    r"\bcomment\s+on\s+(?:table|column|index)\s+([\w.]+)",
    r"\bcreate_hypertable\s*\(\s*'([\w.]+)'",
    r"\b(create_hypertable|by_range)\s*\(",
]


def test_every_object_is_schema_qualified() -> None:
    layout = discover()
    for sql_file in (layout.head, *layout.incremental, *layout.idempotent):
        text = re.sub(r"--[^\n]*", "", sql_file.text)
        for pattern in QUALIFIED_REFERENCES:
            for match in re.finditer(pattern, text):
                before = text[max(match.start() - 1, 0)]
                if match[1] in ("create_hypertable", "by_range") and before == ".":
                    continue
                assert "." in match[1], f"{sql_file.label}: {match[0]!r} is not schema-qualified"


def test_names_are_unique_and_follow_the_table_prefix() -> None:
    names = declared_names()
    everything = [*names.check_constraints, *names.key_constraints, *names.indexes]
    assert len(everything) == len(set(everything))
    for name in everything:
        assert any(name.startswith(f"{table}_") for table in names.tables), name


def test_autocommit_marker() -> None:
    layout = discover()
    assert not any(f.autocommit for f in (*layout.incremental, *layout.idempotent))


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("select 1; select 2;", ["select 1;", "select 2;"]),
        ("select 1", ["select 1"]),
        ("select ';'; select 2", ["select ';';", "select 2"]),
        ("select 'it''s; fine'; x", ["select 'it''s; fine';", "x"]),
        ("select E'a\\'; b'; c", ["select E'a\\'; b';", "c"]),
        ('select ";" from t; y', ['select ";" from t;', "y"]),
        ("do $$ begin a; b; end $$; z", ["do $$ begin a; b; end $$;", "z"]),
        ("do $f$ a; $$ b; $$ $f$; z", ["do $f$ a; $$ b; $$ $f$;", "z"]),
        ("select $1; y", ["select $1;", "y"]),
        ("-- one; two\nselect 1; -- three;\n", ["-- one; two\nselect 1;"]),
        ("/* a; /* b; */ c; */ select 1; d", ["/* a; /* b; */ c; */ select 1;", "d"]),
        ("-- autocommit\n;;\n", []),
    ],
)
def test_split_statements(script: str, expected: list[str]) -> None:
    assert split_statements(script) == expected
