from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from worker.otlp.grpc_server import GrpcReceiver, GrpcSettings
from worker.otlp.server import Settings, create_app


@contextlib.contextmanager
def serve_in_thread(settings: Settings, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Runs the endpoint in a background thread; yields its base URL (http://host:port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(create_app(settings), access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the OTLP endpoint did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def serve_grpc(
    settings: Settings, grpc_settings: GrpcSettings | None = None, host: str = "127.0.0.1"
) -> Iterator[str]:
    """Runs the OTLP/gRPC endpoint on a free port; yields its target (host:port)."""
    receiver = GrpcReceiver(settings, grpc_settings or GrpcSettings(port=0), host)
    receiver.start()
    try:
        yield f"{host}:{receiver.port}"
    finally:
        receiver.stop(grace_s=5)
