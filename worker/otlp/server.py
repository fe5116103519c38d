from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from worker.ingest.time_policy import DEFAULT_MAX_FUTURE
from worker.otlp.admission import DEFAULT_MAX_RETRY_AFTER_S, Admission
from worker.otlp.body import DEFAULT_MAX_BODY_BYTES, ENCODINGS, TooLarge, read_body
from worker.otlp.decode import JSON, PROTOBUF, MalformedPayload, decode_request
from worker.otlp.export import (
    Unavailable,
    bearer_token_matches,
    connection_pool,
    store_request,
)
from worker.otlp.mapping import CHUNK_SPANS

log = logging.getLogger("worker.otlp")


@dataclass(frozen=True)
class Settings:
    database_url: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    token: str | None = None
    retry_after_s: int = 5
    pool_size: int = 4
    # How long a request waits for a database connection before it is answered 503.
    pool_timeout_s: float = 5.0
    # Requests read and processed at once; others wait their turn before their body is read.
    # With chunk_spans, this bounds the memory: each holds its body, decoded, and one chunk.
    max_concurrent_requests: int = 4
    # Requests admitted at once, the ones waiting for their turn included (None: twice as many
    # as are processed at once, so that a wave of retries is absorbed); past it a request is
    # answered 503 at once instead of waiting, with a Retry-After of at most busy_retry_after_s.
    max_requests_in_flight: int | None = None
    busy_retry_after_s: int = DEFAULT_MAX_RETRY_AFTER_S
    chunk_spans: int = CHUNK_SPANS
    # Spans starting further ahead of now than this are refused (a sender's clock far off).
    max_future: timedelta = DEFAULT_MAX_FUTURE


def create_app(settings: Settings) -> Starlette:
    pool = connection_pool(
        settings.database_url, settings.pool_size, settings.pool_timeout_s, "otlp-ingest"
    )

    requests = asyncio.Semaphore(settings.max_concurrent_requests)
    in_flight = settings.max_requests_in_flight or 2 * settings.max_concurrent_requests
    if in_flight < settings.max_concurrent_requests:
        raise ValueError(
            f"max_requests_in_flight ({in_flight}) must be at least max_concurrent_requests "
            f"({settings.max_concurrent_requests}): the requests processed are in flight too"
        )
    admission = Admission(in_flight, settings.busy_retry_after_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Not waiting for the database: the endpoint starts, and answers 503, while it is down.
        pool.open(wait=False)
        try:
            yield
        finally:
            pool.close()

    def process(body: bytes, content_type: str) -> ExportTraceServiceResponse:
        decoded = decode_request(body, content_type)
        return store_request(pool, decoded, settings.chunk_spans, settings.max_future)

    async def export(request: Request) -> Response:
        content_type = _media_type(request.headers.get("content-type", ""))
        reply = JSON if content_type == JSON else PROTOBUF
        if settings.token is not None and not _authorized(request, settings.token):
            return _status(reply, 401, code_pb2.UNAUTHENTICATED, "a valid bearer token is needed")
        if content_type not in (PROTOBUF, JSON):
            message = f"Content-Type must be {PROTOBUF} or {JSON}"
            return _status(JSON, 415, code_pb2.INVALID_ARGUMENT, message)
        encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
        if encoding not in ENCODINGS:
            message = f"Content-Encoding must be one of {', '.join(ENCODINGS)}"
            return _status(reply, 415, code_pb2.INVALID_ARGUMENT, message)
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _status(reply, 413, code_pb2.RESOURCE_EXHAUSTED, f"the body exceeds {limit} B")
        retry_after = admission.enter()
        if retry_after is not None:
            return _status(
                reply,
                503,
                code_pb2.UNAVAILABLE,
                f"the endpoint is busy ({admission.limit} requests in flight); retry later",
                headers={"Retry-After": str(retry_after)},
            )
        try:
            async with requests:
                body = await read_body(request.stream(), encoding, limit)
                response = await run_in_threadpool(process, body, content_type)
        except TooLarge as exc:
            return _status(reply, 413, code_pb2.RESOURCE_EXHAUSTED, str(exc))
        except MalformedPayload as exc:
            return _status(reply, 400, code_pb2.INVALID_ARGUMENT, str(exc))
        except Unavailable as exc:
            log.warning("database unavailable: %s", exc)
            return _status(
                reply,
                503,
                code_pb2.UNAVAILABLE,
                "the database is unavailable; retry later",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        except ClientDisconnect:
            log.info("the client went away before sending the whole body")
            return Response(status_code=400)
        except Exception:
            # Not retryable for the client (OTLP retries only 429, 502, 503 and 504); logged.
            log.exception("failed to ingest a request")
            return _status(reply, 500, code_pb2.INTERNAL, "internal error; see the server log")
        finally:
            admission.leave()
        return _message(reply, 200, response)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(
        routes=[
            Route("/v1/traces", export, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def _authorized(request: Request, token: str) -> bool:
    return bearer_token_matches(request.headers.get("authorization", ""), token)


def _message(content_type: str, status: int, message: Message, **kwargs: Any) -> Response:
    if content_type == JSON:
        body = json.dumps(json_format.MessageToDict(message)).encode()
    else:
        body = message.SerializeToString()
    return Response(body, status_code=status, media_type=content_type, **kwargs)


def _status(content_type: str, status: int, code: int, text: str, **kwargs: Any) -> Response:
    # OTLP/HTTP: an error response carries a google.rpc.Status in the request's encoding.
    return _message(content_type, status, status_pb2.Status(code=code, message=text), **kwargs)
