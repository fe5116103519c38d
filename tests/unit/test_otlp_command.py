from __future__ import annotations

import pytest

from worker.cli.ingest import (
    GRPC_IN_FLIGHT_ENV,
    GRPC_PORT_ENV,
    MAX_IN_FLIGHT_ENV,
    TOKEN_ENV,
    is_loopback,
)
from worker.cli.main import build_parser, main


def test_ingest_arguments_and_defaults() -> None:
    args = build_parser().parse_args(["ingest"])
    assert (args.host, args.port, args.max_body_bytes) == ("127.0.0.1", 4318, 20 * 1024 * 1024)
    assert args.token is None and callable(args.handler)
    args = build_parser().parse_args(["ingest", "--port", "5000", "--max-body-bytes", "1024"])
    assert (args.port, args.max_body_bytes) == (5000, 1024)
    assert build_parser().parse_args(["ingest"]).max_concurrent_requests == 4
    args = build_parser().parse_args(["ingest", "--max-concurrent-requests", "2"])
    assert args.max_concurrent_requests == 2


def test_grpc_arguments() -> None:
    args = build_parser().parse_args(["ingest"])
    # None: the environment variable, else 4317, decides when the command runs.
    assert (args.grpc_port, args.grpc_max_requests_in_flight) == (None, None)
    args = build_parser().parse_args(
        ["ingest", "--grpc-port", "5317", "--grpc-max-requests-in-flight", "3"]
    )
    assert (args.grpc_port, args.grpc_max_requests_in_flight) == (5317, 3)
    for off in ("off", "OFF", "0"):
        assert build_parser().parse_args(["ingest", "--grpc-port", off]).grpc_port == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--max-body-bytes", "0"],
        ["--max-concurrent-requests", "0"],
        ["--grpc-port", "70000"],
        ["--grpc-port", "on"],
        ["--grpc-max-requests-in-flight", "0"],
        ["--max-requests-in-flight", "0"],
    ],
)
def test_ingest_rejects_bad_numbers(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", *argv])


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("ingest.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_without_token_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    argv = ["ingest", "--host", "0.0.0.0", "--database-url", "postgresql://nowhere/db"]
    assert main(argv) == 2
    assert "refusing to listen on 0.0.0.0 without a bearer token" in caplog.text
    assert TOKEN_ENV in caplog.text


def test_ingest_needs_a_database(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["ingest"]) == 2
    assert "no database" in caplog.text


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (GRPC_PORT_ENV, "grpc", "must be a port number or 'off'"),
        (GRPC_PORT_ENV, "65536", "must be a port number or 'off'"),
        (GRPC_IN_FLIGHT_ENV, "0", "must be a whole number, at least 1"),
    ],
)
def test_bad_grpc_environment_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["ingest", "--database-url", "postgresql://nowhere/db"]) == 2
    assert f"{variable} {message}" in caplog.text


def test_non_loopback_without_token_refuses_grpc_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # One address for both endpoints, so one rule: the gRPC endpoint is never served open.
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv(GRPC_PORT_ENV, "4317")
    argv = ["ingest", "--host", "::", "--port", "0", "--database-url", "postgresql://nowhere/db"]
    assert main(argv) == 2
    assert "refusing to listen on :: without a bearer token" in caplog.text


def test_requests_in_flight_from_the_flag_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    import worker.otlp.server

    seen: list[int | None] = []
    real = worker.otlp.server.create_app

    def recording(settings: worker.otlp.server.Settings) -> object:
        seen.append(settings.max_requests_in_flight)
        return real(settings)

    monkeypatch.setattr(worker.otlp.server, "create_app", recording)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # not serving: only settings
    url = ["--database-url", "postgresql://nowhere/db", "--grpc-port", "off"]
    monkeypatch.delenv(MAX_IN_FLIGHT_ENV, raising=False)
    assert main(["ingest", *url]) == 0
    monkeypatch.setenv(MAX_IN_FLIGHT_ENV, "6")
    assert main(["ingest", *url]) == 0
    assert main(["ingest", *url, "--max-requests-in-flight", "5"]) == 0
    assert seen == [None, 6, 5]  # None: twice --max-concurrent-requests


def test_fewer_requests_in_flight_than_processed_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(MAX_IN_FLIGHT_ENV, raising=False)
    argv = ["ingest", "--database-url", "postgresql://nowhere/db", "--max-requests-in-flight", "2"]
    assert main(argv) == 2
    assert "requests in flight (2) must be at least --max-concurrent-requests (4)" in caplog.text


@pytest.mark.parametrize("value", ["0", "many"])
def test_a_bad_requests_in_flight_environment_value_refuses_to_start(
    value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(MAX_IN_FLIGHT_ENV, value)
    assert main(["ingest", "--database-url", "postgresql://nowhere/db"]) == 2
    assert f"{MAX_IN_FLIGHT_ENV} must be a whole number, at least 1" in caplog.text
