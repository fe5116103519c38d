from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from worker.rollups.connections import connect, sever

log = logging.getLogger("worker.rollups")

# Taken when free, expired or already ours, in one statement, so two callers cannot both win. A
# second delivery of the same Celery task waits like anyone else: the first may still be running
# (Redis hands a task out again when it stays unacknowledged past the visibility timeout), and a
# dead worker's lease expires within its time to live because only a live heartbeat renews it.
_ACQUIRE = """
insert into observability.worker_leases as l (name, holder, task_id, acquired_at, expires_at)
values (%(name)s, %(holder)s, %(task_id)s, pg_catalog.now(), pg_catalog.now() + %(ttl)s)
on conflict (name) do update
  set holder = excluded.holder, task_id = excluded.task_id,
    acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
  where l.expires_at <= pg_catalog.now() or l.holder = excluded.holder
returning holder
"""
_CURRENT = "select holder, expires_at from observability.worker_leases where name = %s"
_HOLDER = "select holder, task_id from observability.worker_leases where name = %s"
_RENEW = """
update observability.worker_leases set expires_at = pg_catalog.now() + %(ttl)s
where name = %(name)s and holder = %(holder)s
"""
_RELEASE = "delete from observability.worker_leases where name = %(name)s and holder = %(holder)s"


class LeaseBusy(RuntimeError):
    """Someone else holds the lease: skip, or retry later."""

    def __init__(self, name: str, holder: str, expires_at: datetime | None) -> None:
        until = f" until {expires_at.isoformat()} at the latest" if expires_at else ""
        super().__init__(f"{name} is held by {holder}{until}")
        self.name = name
        self.holder = holder
        self.expires_at = expires_at

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery pickles a task's exception for its caller; the default reduce would call
        # __init__ with the message alone.
        return (type(self), (self.name, self.holder, self.expires_at))


class LeaseLost(RuntimeError):
    """The lease is no longer ours: it was not renewed in time (the database did not answer)
    and another run took it, or its row was removed."""


class DatabaseUnresponsive(psycopg.OperationalError):
    """The database stopped answering (a frozen server, a network that drops packets): the run
    was aborted instead of waiting for it without end."""


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Lease:
    conn: psycopg.Connection[Any]
    name: str
    holder: str
    ttl: timedelta
    _lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    # Set by the heartbeat when the database has not answered for unresponsive_after seconds.
    unresponsive_for: float | None = None
    database_url: str | None = None

    def renew(self) -> None:
        params = {"name": self.name, "holder": self.holder, "ttl": self.ttl}
        if self._lost.is_set() or self.conn.execute(_RENEW, params).rowcount != 1:
            raise LeaseLost(self._lost_message())

    def _lost_message(self) -> str:
        try:
            row = self.conn.execute(_HOLDER, [self.name]).fetchone()
        except psycopg.Error:
            row = None
        now = f"now held by {row[0]} (task {row[1]})" if row else "its row is gone"
        return (
            f"{self.name} is no longer ours ({self.holder}): it was not renewed within "
            f"{self.ttl.total_seconds():g} s and was taken over; {now}"
        )

    def keep_alive(
        self, database_url: str, *, unresponsive_after: float | None = None
    ) -> threading.Thread:
        """Renew the lease every third of its time to live from a thread with its own
        connection, so one long batch does not let it expire under us. When no renewal has
        got through for unresponsive_after seconds, shut the run's connection down, so a query
        waiting on a frozen database fails instead of hanging."""
        self.database_url = database_url
        thread = threading.Thread(
            target=self._heartbeat,
            args=(database_url, unresponsive_after),
            name=f"lease {self.name}",
            daemon=True,
        )
        thread.start()
        return thread

    def _heartbeat(self, database_url: str, unresponsive_after: float | None) -> None:
        params = {"name": self.name, "holder": self.holder, "ttl": self.ttl}
        interval = self.ttl.total_seconds() / 3
        last_answer = time.monotonic()
        while not self._stop.wait(interval):
            try:
                timeout = max(2, int(min(interval, 10)))
                with connect(database_url, connect_timeout=timeout) as conn:
                    if conn.execute(_RENEW, params).rowcount != 1:
                        self._lost.set()
                        return
                last_answer = time.monotonic()
            except psycopg.Error as exc:
                log.warning("could not renew lease %s: %s", self.name, exc)
                silent = time.monotonic() - last_answer
                if unresponsive_after is not None and silent >= unresponsive_after:
                    log.error(
                        "the database has not answered for %.0f s: aborting the run holding %s",
                        silent,
                        self.name,
                    )
                    self.unresponsive_for = silent
                    sever(self.conn)
                    return

    def release(self) -> None:
        self._stop.set()
        params = {"name": self.name, "holder": self.holder}
        # When the run's connection was closed under a statement (a time limit), a new one
        # frees the lease for the attempt that resumes the run. When the database is gone the
        # lease is left to expire; raising here would hide the error that got us here.
        with suppress(psycopg.Error):
            if not self.conn.closed:
                self.conn.execute(_RELEASE, params)
            elif self.database_url and self.unresponsive_for is None:
                with connect(self.database_url, connect_timeout=5) as conn:
                    conn.execute(_RELEASE, params)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire(
    conn: psycopg.Connection[Any],
    name: str,
    ttl: timedelta,
    *,
    holder: str | None = None,
    task_id: str | None = None,
    wait_seconds: float = 0.0,
) -> Lease:
    """Take the named lease, waiting up to wait_seconds for its holder to let go.

    conn must be autocommit: the lease is visible to others as soon as it is taken. Raises
    LeaseBusy when the lease is still held at the deadline.
    """
    holder = holder or new_holder()
    deadline = time.monotonic() + wait_seconds
    params = {"name": name, "holder": holder, "task_id": task_id, "ttl": ttl}
    while conn.execute(_ACQUIRE, params).fetchone() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            row = conn.execute(_CURRENT, [name]).fetchone()
            raise LeaseBusy(name, row[0] if row else "another worker", row[1] if row else None)
        time.sleep(min(1.0, remaining))
    return Lease(conn, name, holder, ttl)
