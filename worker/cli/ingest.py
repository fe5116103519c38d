from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from datetime import timedelta
from typing import TYPE_CHECKING

from worker.cli.common import add_database_url, database_url
from worker.otlp import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:
    from worker.cli.common import SubParsers

log = logging.getLogger("worker.ingest")

TOKEN_ENV = "OBSERVABILITY_INGEST_TOKEN"
MAX_FUTURE_ENV = "OBSERVABILITY_MAX_FUTURE_SECONDS"
GRPC_PORT_ENV = "OBSERVABILITY_GRPC_PORT"
GRPC_IN_FLIGHT_ENV = "OBSERVABILITY_GRPC_MAX_REQUESTS_IN_FLIGHT"
# Kept here, not imported from worker.otlp.grpc_server, so that parsing the command line does
# not load gRPC.
DEFAULT_GRPC_PORT = 4317
DEFAULT_GRPC_IN_FLIGHT = 8
MAX_IN_FLIGHT_ENV = "OBSERVABILITY_MAX_REQUESTS_IN_FLIGHT"


def register(subparsers: SubParsers) -> None:
    ingest = subparsers.add_parser(
        "ingest",
        help="serve the OTLP traces endpoints (HTTP POST /v1/traces, gRPC TraceService/Export)",
        description="Receive OpenTelemetry traces over OTLP/HTTP (protobuf or JSON, optionally "
        "gzip) on POST /v1/traces and over OTLP/gRPC (TraceService/Export, optionally gzip), "
        "and store them as traces and spans. A bearer token is required when the endpoints "
        "listen on anything but loopback.",
    )
    ingest.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    ingest.add_argument(
        "--port", type=_port, default=4318, help="TCP port of OTLP/HTTP (default: 4318)"
    )
    ingest.add_argument(
        "--grpc-port",
        type=grpc_port,
        default=None,
        help="TCP port of OTLP/gRPC, on the same address; 0 or 'off' serves no gRPC "
        f"(default: the {GRPC_PORT_ENV} environment variable, else {DEFAULT_GRPC_PORT})",
    )
    add_database_url(ingest)
    ingest.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body, before and after decompression; larger ones get 413 "
        "(default: 20 MiB)",
    )
    ingest.add_argument(
        "--token",
        default=None,
        help=f"bearer token clients must send (default: the {TOKEN_ENV} environment variable)",
    )
    ingest.add_argument(
        "--pool-size",
        type=_positive,
        default=4,
        help="database connections of each endpoint, HTTP and gRPC (default: 4)",
    )
    ingest.add_argument(
        "--max-concurrent-requests",
        type=_positive,
        default=4,
        help="requests processed at once; other admitted ones wait before their body is read. "
        "Each takes about 6 times its body size in memory while it is processed (default: 4)",
    )
    ingest.add_argument(
        "--max-requests-in-flight",
        type=_positive,
        default=None,
        help="requests admitted at once, those waiting for their turn included, at least "
        "--max-concurrent-requests; past it a request is answered 503 with Retry-After at once, "
        f"and OTLP exporters retry it (default: the {MAX_IN_FLIGHT_ENV} environment variable, "
        "else twice --max-concurrent-requests)",
    )
    ingest.add_argument(
        "--grpc-max-requests-in-flight",
        type=_positive,
        default=None,
        help="gRPC requests processed at once; past it a request is answered UNAVAILABLE with "
        "a retry delay at once, and OTLP exporters retry it "
        f"(default: the {GRPC_IN_FLIGHT_ENV} environment variable, else {DEFAULT_GRPC_IN_FLIGHT})",
    )
    ingest.add_argument(
        "--max-future-seconds",
        type=_positive,
        default=None,
        help="refuse spans starting more than this many seconds ahead of the server's clock "
        f"(default: the {MAX_FUTURE_ENV} environment variable, else 3600)",
    )
    ingest.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    url = database_url(args, log)
    if not url:
        return 2
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(args.host):
        log.error(
            "refusing to listen on %s without a bearer token: pass --token or set %s "
            "(only loopback addresses may go without one)",
            args.host,
            TOKEN_ENV,
        )
        return 2
    import uvicorn

    from worker.otlp.server import Settings, create_app

    try:
        max_future = args.max_future_seconds or _positive(os.environ.get(MAX_FUTURE_ENV) or "3600")
    except (ValueError, argparse.ArgumentTypeError) as exc:
        log.error("%s must be a whole number of seconds, at least 1: %s", MAX_FUTURE_ENV, exc)
        return 2
    try:
        from_env = os.environ.get(MAX_IN_FLIGHT_ENV)
        in_flight = args.max_requests_in_flight or (_positive(from_env) if from_env else None)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        log.error("%s must be a whole number, at least 1: %s", MAX_IN_FLIGHT_ENV, exc)
        return 2
    if in_flight is not None and in_flight < args.max_concurrent_requests:
        log.error(
            "requests in flight (%d) must be at least --max-concurrent-requests (%d): the "
            "requests processed are in flight too",
            in_flight,
            args.max_concurrent_requests,
        )
        return 2
    settings = Settings(
        database_url=url,
        max_future=timedelta(seconds=max_future),
        max_body_bytes=args.max_body_bytes,
        token=token,
        pool_size=args.pool_size,
        max_concurrent_requests=args.max_concurrent_requests,
        max_requests_in_flight=in_flight,
    )
    try:
        grpc_port_number = (
            args.grpc_port
            if args.grpc_port is not None
            else grpc_port(os.environ.get(GRPC_PORT_ENV) or str(DEFAULT_GRPC_PORT))
        )
    except (ValueError, argparse.ArgumentTypeError) as exc:
        log.error("%s must be a port number or 'off': %s", GRPC_PORT_ENV, exc)
        return 2
    try:
        grpc_in_flight = args.grpc_max_requests_in_flight or _positive(
            os.environ.get(GRPC_IN_FLIGHT_ENV) or str(DEFAULT_GRPC_IN_FLIGHT)
        )
    except (ValueError, argparse.ArgumentTypeError) as exc:
        log.error("%s must be a whole number, at least 1: %s", GRPC_IN_FLIGHT_ENV, exc)
        return 2
    receiver = None
    if grpc_port_number:
        from worker.otlp.grpc_server import GrpcReceiver, GrpcSettings, address

        grpc_settings = GrpcSettings(port=grpc_port_number, max_requests_in_flight=grpc_in_flight)
        try:
            receiver = GrpcReceiver(settings, grpc_settings, args.host)
        except RuntimeError as exc:
            log.error(
                "cannot serve OTLP/gRPC on %s: %s (is the port in use? pass --grpc-port with "
                "another port, or off)",
                address(args.host, grpc_port_number),
                exc,
            )
            return 2
        receiver.start()
        log.info(
            "OTLP/gRPC endpoint on %s (bearer token %s)",
            address(args.host, receiver.port),
            "required" if token else "off",
        )
    log.info(
        "OTLP/HTTP endpoint on http://%s:%d/v1/traces (bearer token %s)",
        args.host,
        args.port,
        "required" if token else "off",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="debug" if args.verbose else "info",
    )
    try:
        uvicorn.Server(config).run()
    finally:
        if receiver is not None:
            receiver.stop()
    return 0


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {value}")
    return value


def grpc_port(text: str) -> int:
    """A port number; 0 (also written "off") turns the endpoint off."""
    if text.strip().lower() == "off":
        return 0
    return _port(text)
