from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceServicer
from psycopg_pool import ConnectionPool

from worker.otlp.decode import MalformedPayload, decode_protobuf
from worker.otlp.export import (
    Unavailable,
    bearer_token_matches,
    connection_pool,
    store_request,
)
from worker.otlp.server import Settings

log = logging.getLogger("worker.otlp")

DEFAULT_GRPC_PORT = 4317
DEFAULT_MAX_REQUESTS_IN_FLIGHT = 8
DEFAULT_BUSY_RETRY_AFTER_S = 1
# Threads beyond the in-flight limit: they only answer the requests past it, at once, instead
# of leaving them queued inside the server until a thread is free.
REFUSING_THREADS = 4
LOG_BUSY_EVERY_S = 10.0

SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name


@dataclass(frozen=True)
class GrpcSettings:
    port: int = DEFAULT_GRPC_PORT
    # Requests decoded and stored at once; past it a request is answered UNAVAILABLE at once,
    # with a retry delay of busy_retry_after_s, and OTLP exporters retry it.
    max_requests_in_flight: int = DEFAULT_MAX_REQUESTS_IN_FLIGHT
    busy_retry_after_s: int = DEFAULT_BUSY_RETRY_AFTER_S

    def __post_init__(self) -> None:
        if self.max_requests_in_flight < 1:
            limit = self.max_requests_in_flight
            raise ValueError(f"requests in flight must be limited to 1 or more, not {limit}")
        if self.busy_retry_after_s < 1:
            raise ValueError(
                f"the busy retry delay must be at least 1 s, not {self.busy_retry_after_s}"
            )


class TraceReceiver(TraceServiceServicer):
    """TraceService/Export with the semantics of the OTLP/HTTP endpoint (worker.otlp.server).

    The request arrives as bytes, not parsed by gRPC: the decoder then keeps the spans that
    decode when others do not (partial success), and a body that is no request at all is
    INVALID_ARGUMENT rather than gRPC's INTERNAL for a failed deserialization.
    """

    def __init__(self, settings: Settings, grpc_settings: GrpcSettings, pool: ConnectionPool):
        self.settings = settings
        self.limit = grpc_settings.max_requests_in_flight
        self.busy_retry_after_s = grpc_settings.busy_retry_after_s
        self.pool = pool
        self._slots = threading.BoundedSemaphore(self.limit)
        self._busy_lock = threading.Lock()
        self._busy_refused = 0  # since the last log line
        self._busy_logged_at = -math.inf

    def Export(self, request: bytes, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        token = self.settings.token
        if token is not None and not bearer_token_matches(_authorization(context), token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is needed")
        if not self._slots.acquire(blocking=False):
            self._log_busy()
            _abort_unavailable(
                context,
                f"the endpoint is busy ({self.limit} requests in flight); retry later",
                self.busy_retry_after_s,
            )
        try:
            decoded = decode_protobuf(request)
            return store_request(
                self.pool, decoded, self.settings.chunk_spans, self.settings.max_future
            )
        except MalformedPayload as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Unavailable as exc:
            log.warning("database unavailable: %s", exc)
            _abort_unavailable(
                context, "the database is unavailable; retry later", self.settings.retry_after_s
            )
        except Exception:
            log.exception("failed to ingest a request")
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            self._slots.release()

    def _log_busy(self) -> None:
        # Once in a while, with a count: a saturated endpoint refuses many requests a second.
        with self._busy_lock:
            self._busy_refused += 1
            now = time.monotonic()
            if now - self._busy_logged_at < LOG_BUSY_EVERY_S:
                return
            refused, self._busy_refused, self._busy_logged_at = self._busy_refused, 0, now
        log.warning(
            "busy: %d gRPC requests in flight, the limit; %d answered UNAVAILABLE",
            self.limit,
            refused,
        )


class GrpcReceiver:
    """The OTLP/gRPC traces endpoint: a gRPC server with its own connection pool."""

    def __init__(self, settings: Settings, grpc_settings: GrpcSettings, host: str) -> None:
        self.pool = connection_pool(
            settings.database_url, settings.pool_size, settings.pool_timeout_s, "otlp-grpc"
        )
        limit = grpc_settings.max_requests_in_flight
        self.server = grpc.server(
            ThreadPoolExecutor(
                max_workers=limit + REFUSING_THREADS, thread_name_prefix="otlp-grpc"
            ),
            options=[
                # gRPC applies it to the decompressed message too, so a gzip bomb is refused.
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                # Otherwise a second process binds the same port and takes half the requests.
                ("grpc.so_reuseport", 0),
            ],
        )
        receiver = TraceReceiver(settings, grpc_settings, self.pool)
        handler = grpc.unary_unary_rpc_method_handler(
            receiver.Export,
            request_deserializer=None,  # the bytes as received
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),)
        )
        # Raises RuntimeError when the address cannot be bound.
        self.port = self.server.add_insecure_port(address(host, grpc_settings.port))

    def start(self) -> None:
        # Not waiting for the database: the endpoint starts, and answers UNAVAILABLE, while it
        # is down.
        self.pool.open(wait=False)
        self.server.start()

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuses new requests and waits up to grace_s for those being processed."""
        self.server.stop(grace_s).wait()
        self.pool.close()


def address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _authorization(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return ""


def _abort_unavailable(context: grpc.ServicerContext, message: str, delay_s: int) -> NoReturn:
    # The OTLP specification puts a google.rpc.RetryInfo in the status details; the Python
    # exporter reads it from its own metadata entry, and gRPC's retry policy reads the pushback.
    retry = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=delay_s))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    status.details.add().Pack(retry)
    context.set_trailing_metadata(
        (
            ("grpc-status-details-bin", status.SerializeToString()),
            ("google.rpc.retryinfo-bin", retry.SerializeToString()),
            ("grpc-retry-pushback-ms", str(delay_s * 1000)),
        )
    )
    context.abort(grpc.StatusCode.UNAVAILABLE, message)
