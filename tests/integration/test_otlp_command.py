from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from tests.otlp_encode import make_request, make_span

ROOT_DIR = Path(__file__).resolve().parents[2]
TOKEN = "command-line-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ingest_command_serves_and_stops(clean_observability: str) -> None:
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "OBSERVABILITY_INGEST_TOKEN": TOKEN}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "ingest",
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--database-url",
            clean_observability,
        ],  # fmt: skip
        cwd=ROOT_DIR,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the ingest command did not start"
            time.sleep(0.1)
        start = (int(time.time()) - 60) * 10**9
        span = make_span("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "turn",
                         start, start + 10**9)  # fmt: skip
        body = make_request([span]).SerializeToString()
        headers = {"content-type": "application/x-protobuf"}
        assert httpx.post(f"{base}/v1/traces", content=body, headers=headers).status_code == 401
        headers["authorization"] = f"Bearer {TOKEN}"
        assert httpx.post(f"{base}/v1/traces", content=body, headers=headers).status_code == 200
        with psycopg.connect(clean_observability, autocommit=True) as conn:
            assert conn.execute("select name from observability.traces").fetchall() == [("turn",)]
        # The same process serves OTLP/gRPC, with the same token.
        other = make_span("1af7651916cd43dd8448eb211c80319c", "c7ad6b7169203331", "grpc turn",
                          start, start + 10**9)  # fmt: skip
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = TraceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Export(make_request([other]), timeout=30)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            metadata = (("authorization", f"Bearer {TOKEN}"),)
            stub.Export(make_request([other]), metadata=metadata, timeout=30)
        with psycopg.connect(clean_observability, autocommit=True) as conn:
            names = conn.execute("select name from observability.traces order by name").fetchall()
            assert names == [("grpc turn",), ("turn",)]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    # SIGTERM: uvicorn shuts down gracefully, then the CLI exits as on Ctrl-C.
    assert process.returncode == 130, stderr
    assert "Application shutdown complete" in stderr
    assert f"http://127.0.0.1:{port}/v1/traces (bearer token required)" in stderr
    assert f"OTLP/gRPC endpoint on 127.0.0.1:{grpc_port} (bearer token required)" in stderr


def test_a_grpc_port_in_use_stops_the_command(migrated_database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        env = {**os.environ, "OBSERVABILITY_GRPC_PORT": str(busy)}
        command = [sys.executable, "-m", "worker", "ingest", "--port", str(free_port()),
                   "--database-url", migrated_database_url]  # fmt: skip
        done = subprocess.run(
            command, cwd=ROOT_DIR, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot serve OTLP/gRPC on 127.0.0.1:{busy}" in done.stderr
