from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass, field

log = logging.getLogger("worker.otlp")

# Exporters give up an export some seconds after it began (10 s by default in the
# OpenTelemetry SDKs); a later retry would never come.
DEFAULT_MAX_RETRY_AFTER_S = 3
RATE_WINDOW_S = 5.0
LOG_EVERY_S = 10.0


@dataclass
class Admission:
    """Requests in flight (being read, waiting for their turn or processed), at most limit.

    A request past the limit is refused at once instead of queued, so the accepted ones are
    answered quickly. Each refused one is told when to come back (Retry-After): the refused
    requests of a burst get successive slots at the rate the endpoint has been finishing
    requests, so their retries do not all arrive in the same second, to be refused again.
    Past the longest wait, the slots start again from the next second. Used from the event loop
    only, so it needs no lock.
    """

    limit: int
    max_retry_after_s: int = DEFAULT_MAX_RETRY_AFTER_S
    in_flight: int = 0
    refused_total: int = 0
    _finished: collections.deque[float] = field(default_factory=collections.deque)
    _next_slot: float = -math.inf
    _refused: int = 0  # since the last log line
    _logged_at: float = -math.inf

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"requests in flight must be limited to 1 or more, not {self.limit}")
        if self.max_retry_after_s < 1:
            raise ValueError(
                f"the longest Retry-After must be at least 1 s, got {self.max_retry_after_s}"
            )

    def enter(self) -> int | None:
        """None when the request is admitted (it must then leave()); otherwise the whole
        seconds after which to retry it."""
        if self.in_flight < self.limit:
            self.in_flight += 1
            return None
        now = time.monotonic()
        self.refused_total += 1
        self._refused += 1
        if now - self._logged_at >= LOG_EVERY_S:
            since = "" if self._logged_at == -math.inf else f" in {now - self._logged_at:.0f} s"
            log.warning(
                "busy: %d requests in flight, the limit; %d answered 503%s",
                self.in_flight,
                self._refused,
                since,
            )
            self._logged_at, self._refused = now, 0
        slot = max(self._next_slot, now + 1.0)
        if slot - now >= self.max_retry_after_s + 1.0:
            # More refused than fit the longest wait: they are spread over it again, rather than
            # all told the longest wait, to come back together after it.
            slot = now + 1.0
        self._next_slot = slot + 1.0 / self._rate(now)
        # Retry-After counts whole seconds: the slots of each second share its start.
        return min(self.max_retry_after_s, int(slot - now + 1e-6))

    def leave(self) -> None:
        self.in_flight -= 1
        now = time.monotonic()
        self._finished.append(now)
        self._rate(now)  # drops what is past the window

    def _rate(self, now: float) -> float:
        """Requests finished per second lately; limit a second while too few have finished to
        tell."""
        finished = self._finished
        while finished and finished[0] < now - RATE_WINDOW_S:
            finished.popleft()
        if len(finished) < self.limit:
            return float(self.limit)
        return len(finished) / max(1.0, now - finished[0])
