from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

import pytest

from worker.embedded.engine import (
    PGLITE_PACKAGE,
    EmbeddedEngine,
    EngineStartupError,
    EngineUnavailable,
    _parse_ready,
    default_engine_dir,
    find_node,
)


def _real_node_ok() -> bool:
    try:
        find_node()
    except EngineUnavailable:
        return False
    return True


requires_node = pytest.mark.skipif(not _real_node_ok(), reason="needs Node.js 20+ on PATH")


def fake_node(bin_dir: Path, version: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    node = bin_dir / "node"
    node.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo {version}; fi\nexit 0\n')
    node.chmod(node.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return node


def engine_dir_with(tmp_path: Path, server_js: str) -> Path:
    engine_dir = tmp_path / "engine"
    (engine_dir / "node_modules" / PGLITE_PACKAGE).mkdir(parents=True)
    (engine_dir / "server.mjs").write_text(server_js)
    return engine_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_node_missing_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineUnavailable, match="Node.js") as info:
        EmbeddedEngine().start()
    assert "20+" in str(info.value)


def test_node_too_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_node(tmp_path / "bin", "v18.19.1")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(EngineUnavailable) as info:
        EmbeddedEngine().start()
    message = str(info.value)
    assert "v18.19.1" in message
    assert "Node.js 20+" in message


def test_missing_node_modules_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_node(tmp_path / "bin", "v22.3.0")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    empty_engine = tmp_path / "empty-engine"
    empty_engine.mkdir()
    monkeypatch.setenv("OBS_ENGINE_DIR", str(empty_engine))
    with pytest.raises(EngineUnavailable) as info:
        EmbeddedEngine().start()
    message = str(info.value)
    assert f"npm ci --prefix {empty_engine.resolve()}" in message
    assert "make setup" in message


def test_engine_dir_defaults_to_repo_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OBS_ENGINE_DIR", raising=False)
    assert default_engine_dir() == Path(__file__).resolve().parents[2] / "engine"
    monkeypatch.setenv("OBS_ENGINE_DIR", str(tmp_path))
    assert default_engine_dir() == tmp_path.resolve()


@pytest.mark.parametrize(
    ("line", "port"),
    [
        ('{"event":"ready","host":"127.0.0.1","port":54321}', 54321),
        ('  {"event": "ready", "port": 5}  ', 5),
        ('{"event":"listening","port":1}', None),
        ("ready on 5432", None),
        ("{not json", None),
    ],
)
def test_parse_ready(line: str, port: int | None) -> None:
    event = _parse_ready(line)
    assert (event["port"] if event else None) == port


@requires_node
def test_engine_exiting_early_reports_its_stderr(tmp_path: Path) -> None:
    engine_dir = engine_dir_with(
        tmp_path,
        'console.error("boom: cannot open data directory");\nprocess.exit(3);\n',
    )
    engine = EmbeddedEngine(engine_dir=engine_dir, startup_timeout=30)
    with pytest.raises(EngineStartupError) as info:
        engine.start()
    message = str(info.value)
    assert "boom: cannot open data directory" in message
    assert "code 3" in message
    assert engine.process is not None and engine.process.returncode == 3


@requires_node
def test_log_in_a_fresh_data_dir_waits_for_ready(tmp_path: Path) -> None:
    engine_dir = engine_dir_with(tmp_path, 'console.error("boom");\nprocess.exit(1);\n')
    fresh, initialised = tmp_path / "fresh", tmp_path / "initialised"
    initialised.mkdir()
    (initialised / "PG_VERSION").write_text("17\n")

    for data_dir in (fresh, initialised):
        with pytest.raises(EngineStartupError):
            EmbeddedEngine(data_dir=data_dir, engine_dir=engine_dir).start()

    # A file in a fresh data dir would stop the engine from initialising it on the next try.
    assert list(fresh.iterdir()) == []
    assert "boom" in (initialised / "engine.log").read_text()


@requires_node
def test_heavy_stderr_is_drained_and_tail_bounded(tmp_path: Path) -> None:
    # ~2 MiB of stderr would block a child writing to an unread pipe.
    script = (
        "for (let i = 0; i < 20000; i++) process.stderr.write(`line ${i} ${'x'.repeat(100)}\\n`);\n"
        'process.stderr.write("final words\\n", () => process.exit(1));\n'
    )
    engine = EmbeddedEngine(engine_dir=engine_dir_with(tmp_path, script), startup_timeout=60)
    with pytest.raises(EngineStartupError) as info:
        engine.start()
    message = str(info.value)
    assert "final words" in message
    assert "line 0 " not in message
    assert len(message.splitlines()) <= 45


@requires_node
def test_startup_timeout_stops_the_engine(tmp_path: Path) -> None:
    script = 'console.error("warming up forever");\nsetInterval(() => {}, 1000);\n'
    engine = EmbeddedEngine(engine_dir=engine_dir_with(tmp_path, script), startup_timeout=2)
    started = time.monotonic()
    with pytest.raises(EngineStartupError, match="did not report ready") as info:
        engine.start()
    assert time.monotonic() - started < 20
    assert "warming up forever" in str(info.value)
    assert engine.process is not None and engine.process.poll() is not None


@requires_node
def test_ready_line_without_a_server_fails_the_query_check(tmp_path: Path) -> None:
    ready = f'{{"event": "ready", "host": "127.0.0.1", "port": {free_port()}}}'
    script = f"console.log({ready!r});\nsetInterval(() => {{}}, 1000);\n"
    engine = EmbeddedEngine(engine_dir=engine_dir_with(tmp_path, script), startup_timeout=3)
    with pytest.raises(EngineStartupError, match="select 1"):
        engine.start()
    assert engine.process is not None and engine.process.poll() is not None


def test_stop_is_idempotent() -> None:
    engine = EmbeddedEngine()
    assert engine.stop() is None
    assert engine.stop() is None
    with pytest.raises(RuntimeError, match="not running"):
        _ = engine.url
    assert engine.port == 0
