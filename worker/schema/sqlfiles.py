from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# Package data: in a checkout, worker/schema/sql links to the top-level sql/ directory; a built
# wheel holds a copy.
SQL_DIR = Path(str(resources.files("worker.schema").joinpath("sql")))
HEAD_FILE = "head.sql"
KINDS = ("incremental", "idempotent")
FILE_NAME = re.compile(r"^(?P<number>\d{3})-(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)\.sql$")
# A file whose first line is exactly this runs statement by statement outside a transaction
# block (continuous-aggregate refreshes, for instance, refuse to run inside one).
AUTOCOMMIT_MARKER = "-- autocommit"


class SqlLayoutError(ValueError):
    """The sql/ directory breaks the naming or numbering rules."""


@dataclass(frozen=True)
class SqlFile:
    kind: str
    name: str
    path: Path
    text: str

    @property
    def number(self) -> int:
        match = FILE_NAME.match(self.name)
        return int(match["number"]) if match else 0

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}" if self.kind in KINDS else self.name

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def autocommit(self) -> bool:
        first_line = self.text.split("\n", 1)[0].strip()
        return first_line.lower() == AUTOCOMMIT_MARKER

    def statements(self) -> list[str]:
        return split_statements(self.text)


@dataclass(frozen=True)
class SqlLayout:
    head: SqlFile
    incremental: tuple[SqlFile, ...]
    idempotent: tuple[SqlFile, ...]


def _read(kind: str, path: Path) -> SqlFile:
    return SqlFile(kind=kind, name=path.name, path=path, text=path.read_text(encoding="utf-8"))


def check_names(kind: str, names: list[str]) -> None:
    """Raise SqlLayoutError unless names are NNN-slug.sql numbered 001, 002, ... without gaps."""
    bad = [name for name in names if not FILE_NAME.match(name)]
    if bad:
        raise SqlLayoutError(
            f"sql/{kind}: file names must look like 001-lowercase-words.sql; offending: "
            + ", ".join(sorted(bad))
        )
    numbers = sorted(int(name[:3]) for name in names)
    expected = list(range(1, len(names) + 1))
    if numbers != expected:
        raise SqlLayoutError(
            f"sql/{kind}: numbers must start at 001 and go up by one; found "
            + ", ".join(f"{n:03d}" for n in numbers)
        )


def discover(sql_dir: Path = SQL_DIR) -> SqlLayout:
    head_path = sql_dir / HEAD_FILE
    if not head_path.is_file():
        raise SqlLayoutError(f"{head_path} is missing")
    stray = sorted(p.name for p in sql_dir.iterdir() if p.name != HEAD_FILE and p.name not in KINDS)
    if stray:
        raise SqlLayoutError(f"{sql_dir}: unexpected entries {', '.join(stray)}")
    files: dict[str, tuple[SqlFile, ...]] = {}
    for kind in KINDS:
        directory = sql_dir / kind
        paths = sorted(directory.iterdir()) if directory.is_dir() else []
        check_names(kind, [p.name for p in paths])
        files[kind] = tuple(_read(kind, p) for p in paths)
    return SqlLayout(
        head=_read("head", head_path),
        incremental=files["incremental"],
        idempotent=files["idempotent"],
    )


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def split_statements(sql: str) -> list[str]:
    """Split a script on top-level semicolons.

    Knows enough SQL lexing to leave semicolons alone inside quotes ('...', "...", E'...'),
    dollar-quoted bodies ($$...$$, $tag$...$tag$) and comments (--, nested /* */).
    """
    statements: list[str] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif ch == "/" and sql.startswith("/*", i):
            depth = 0
            while i < n:
                if sql.startswith("/*", i):
                    depth += 1
                    i += 2
                elif sql.startswith("*/", i):
                    depth -= 1
                    i += 2
                    if depth == 0:
                        break
                else:
                    i += 1
        elif ch in "'\"":
            escapes = ch == "'" and i > 0 and sql[i - 1] in "eE"
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql[i] == ch:
                    if sql.startswith(ch * 2, i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
        elif ch == "$" and (tag := _DOLLAR_TAG.match(sql, i)) and not _in_identifier(sql, i):
            end = sql.find(tag.group(), tag.end())
            i = n if end < 0 else end + len(tag.group())
        elif ch == ";":
            statements.append(sql[start : i + 1])
            i += 1
            start = i
        else:
            i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _in_identifier(sql: str, i: int) -> bool:
    # "$" continues an identifier (a$b) or follows a positional parameter ($1); neither quotes.
    return i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")


def _has_code(statement: str) -> bool:
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.S)
    return without_comments.strip(" \t\r\n;") != ""
