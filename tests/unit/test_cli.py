from __future__ import annotations

import signal
import subprocess
import sys
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


def test_demo_without_its_optional_plotting_library_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker image installs no matplotlib; an import of it then fails like this.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["demo", "--data-dir", str(tmp_path / "data")]) == 1
    assert "llm-observability-store[demo]" in caplog.text
    assert not (tmp_path / "data").exists(), "nothing was started or written"


def test_the_worker_imports_no_plotting_library() -> None:
    code = (
        "import sys, worker.cli.main, worker.scheduling.app, worker.otlp.server; "
        "print('matplotlib' in sys.modules)"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert found.stdout.strip() == "False"
