from __future__ import annotations

import signal
from pathlib import Path

import pytest

from worker.cli.main import COMMANDS, build_parser, main


def test_db_serve_arguments() -> None:
    args = build_parser().parse_args(["db", "serve", "--data-dir", "d", "--port", "5999"])
    assert args.data_dir == Path("d")
    assert args.port == 5999
    assert args.host == "127.0.0.1"
    assert callable(args.handler)


def test_every_registered_command_is_in_help() -> None:
    help_text = build_parser().format_help()
    for name in COMMANDS:
        assert name in help_text


def test_serve_without_engine_deps_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBS_ENGINE_DIR", str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["db", "serve"]) == 1
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("command", ["migrate", "status"])
def test_database_commands_need_a_database(
    command: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main([command]) == 2
    assert "no database: pass --database-url or set DATABASE_URL" in caplog.text
