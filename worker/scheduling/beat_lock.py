from __future__ import annotations

import logging
import os
import threading

import redis

from worker.rollups.leases import new_holder

log = logging.getLogger("worker.beat")

BEAT_LOCK_KEY = "observability:beat-lock"
# Renewed every third of this; a beat that died frees the lock this long after its last renewal.
BEAT_LOCK_TTL_SECONDS = 60


class BeatAlreadyRunning(RuntimeError):
    pass


class BeatLock:
    """A Redis key held by the one running beat, so a second beat refuses to start.

    Two beats would send every scheduled task twice. The tasks are idempotent, so that is
    harmless, but wasteful and confusing in the logs.
    """

    def __init__(self, broker_url: str, ttl_seconds: int = BEAT_LOCK_TTL_SECONDS) -> None:
        self.client = redis.Redis.from_url(broker_url)
        self.ttl = ttl_seconds
        self.holder = new_holder()
        self._stop = threading.Event()

    def acquire(self) -> None:
        if not self.client.set(BEAT_LOCK_KEY, self.holder, nx=True, ex=self.ttl):
            other = self.client.get(BEAT_LOCK_KEY)
            raise BeatAlreadyRunning(
                f"another beat is running ({(other or b'?').decode()}); exactly one may run. "
                f"If it died, its lock expires within {self.ttl} s."
            )
        threading.Thread(target=self._renew, name="beat-lock", daemon=True).start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                current = self.client.get(BEAT_LOCK_KEY)
                if current is not None and current.decode() != self.holder:
                    log.critical("the beat lock was taken by %s; stopping", current.decode())
                    os._exit(1)  # a second beat is now sending the schedule: leave it to that one
                self.client.set(BEAT_LOCK_KEY, self.holder, ex=self.ttl)
            except redis.RedisError as exc:
                log.warning("could not renew the beat lock: %s", exc)

    def release(self) -> None:
        self._stop.set()
        try:
            if self.client.get(BEAT_LOCK_KEY) == self.holder.encode():
                self.client.delete(BEAT_LOCK_KEY)
        except redis.RedisError as exc:
            log.warning("could not release the beat lock: %s", exc)
