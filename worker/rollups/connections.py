from __future__ import annotations

import logging
import os
import socket
from typing import Any

import psycopg

log = logging.getLogger("worker.rollups")

CONNECT_TIMEOUT_SECONDS = 10
# A peer that vanished (host down, network cut) is noticed within about a minute instead of the
# kernel's two hours. A server that is alive but frozen (SIGSTOP) still acknowledges TCP, so
# keepalives cannot see it: the lease heartbeat does (Lease.keep_alive).
KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def connect(
    url: str,
    *,
    statement_timeout: int = 0,
    connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
) -> psycopg.Connection[Any]:
    """An autocommit connection for the worker: bounded connect, keepalives, and a server-side
    statement_timeout (seconds, 0 for the server's default)."""
    options: dict[str, Any] = {"connect_timeout": connect_timeout, **KEEPALIVE}
    if statement_timeout > 0:
        options["options"] = f"-c statement_timeout={statement_timeout * 1000}"
    return psycopg.connect(url, autocommit=True, **options)


def sever(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down under whoever waits on it, so a query blocked on a
    server that no longer answers fails at once with an OperationalError. Only the socket is
    shut down; the connection object stays the caller's to close."""
    try:
        duplicate = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, psycopg.Error) as exc:
        log.warning("could not shut down the connection's socket: %s", exc)
        return
    with duplicate:
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            log.warning("could not shut down the connection's socket: %s", exc)
