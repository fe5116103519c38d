from __future__ import annotations

import pytest

from worker.cli.main import COMMANDS, build_parser, main


def test_migrate_is_registered() -> None:
    assert "migrate" in COMMANDS
    args = build_parser().parse_args(["migrate", "--database-url", "postgresql://x/y"])
    assert (args.database_url, args.revision) == ("postgresql://x/y", "head")


def test_migrate_without_a_database_fails_cleanly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["migrate"]) == 2
    assert "DATABASE_URL" in caplog.text


def test_migrate_with_database_url_option(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["migrate", "--database-url", migrated_database_url]) == 0
    out = capsys.readouterr().out
    assert "schema up to date" in out
    assert "re-ran 002-comments.sql" in out
    assert "alembic revision: 0001" in out


def test_migrate_reads_database_url_from_the_environment(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", migrated_database_url)
    assert main(["migrate"]) == 0
    assert "alembic revision: 0001" in capsys.readouterr().out


def test_migrate_reports_an_unreachable_database(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/none"]) == 1
    assert "cannot reach the database" in caplog.text
