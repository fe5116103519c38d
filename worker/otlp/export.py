from __future__ import annotations

import contextlib
import hmac
import logging
from datetime import timedelta

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from psycopg_pool import ConnectionPool

from worker.ingest.errors import is_unavailable
from worker.otlp.decode import Decoded
from worker.otlp.mapping import iter_batches
from worker.otlp.store import store

# One request's processing, whatever transport it came by (OTLP/HTTP or OTLP/gRPC): the decoded
# request is mapped and stored chunk by chunk, and the answer says what was rejected and why.

log = logging.getLogger("worker.otlp")

MAX_LISTED_REASONS = 10


class Unavailable(Exception):
    """The database cannot take the request now; the client should retry it later."""


def connection_pool(url: str, size: int, timeout_s: float, name: str) -> ConnectionPool:
    """A pool that is not opened yet; open it with open(wait=False) so the endpoint starts, and
    answers "unavailable", while the database is down."""
    return ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        timeout=timeout_s,
        kwargs={"connect_timeout": max(1, int(timeout_s))},
        open=False,
        name=name,
    )


def store_request(
    pool: ConnectionPool, decoded: Decoded, chunk_spans: int, max_future: timedelta
) -> ExportTraceServiceResponse:
    """Stores the decoded request; raises Unavailable when the database cannot take it."""
    reasons: list[str] = []
    warnings: list[str] = []
    rejected_spans = 0
    try:
        with contextlib.ExitStack() as stack:
            conn = None
            # One chunk of rows at a time: a request's rows take many times its size.
            for batch in iter_batches(decoded, chunk_spans):
                rejected_spans += len(batch.rejected)
                reasons += batch.rejected
                if batch.warnings:
                    warnings += batch.warnings
                if not (batch.spans or batch.traces):
                    continue
                if conn is None:
                    conn = stack.enter_context(pool.connection())
                stored = store(conn, batch, max_future)
                rejected_spans += sum(1 for r in stored.refused if r.kind == "span")
                reasons += [r.reason for r in stored.refused]
                warnings += stored.warnings
    except Exception as exc:
        if is_unavailable(exc):
            raise Unavailable(str(exc)) from exc
        raise
    response = ExportTraceServiceResponse()
    if reasons or warnings:
        partial = response.partial_success
        partial.rejected_spans = rejected_spans
        partial.error_message = summary(reasons, warnings)
    if reasons:
        log.info("%d of the request's items rejected: %s", len(reasons), reasons[0])
    return response


def summary(reasons: list[str], warnings: list[str]) -> str:
    parts = []
    if reasons:
        shown = "; ".join(reasons[:MAX_LISTED_REASONS])
        more = len(reasons) - MAX_LISTED_REASONS
        tail = f"; and {more} more" if more > 0 else ""
        parts.append(f"{len(reasons)} rejected: {shown}{tail}")
    if warnings:
        shown = ", ".join(warnings[:MAX_LISTED_REASONS])
        more = len(warnings) - MAX_LISTED_REASONS
        tail = f", and {more} more" if more > 0 else ""
        parts.append(f"accepted with changes: {shown}{tail}")
    return ". ".join(parts)


def bearer_token_matches(authorization: str, token: str) -> bool:
    """The value of an `authorization` header (HTTP) or metadata entry (gRPC) carries token."""
    scheme, _, credentials = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )
