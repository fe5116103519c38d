from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    pass


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


@dataclass(frozen=True)
class WorkerSettings:
    database_url: str | None
    broker_url: str
    result_backend: str
    # Redis redelivers a task nobody acknowledged after this long. Tasks are acknowledged late
    # (after they finish), and a retry waits for its countdown unacknowledged too, so the longest
    # countdown plus the time limit must stay below it, or a task runs twice at once.
    visibility_timeout: int
    time_limit: int
    soft_time_limit: float
    max_retries: int
    # Retry n waits a random time up to min(retry_backoff * 2**n, retry_backoff_max) seconds.
    retry_backoff: int
    retry_backoff_max: int
    metrics_port: int
    # A lease not renewed for this long is free again: how long a killed worker blocks others.
    lease_ttl: int
    # Buckets per refresh-and-sync batch (progress is committed after each); 0: the defaults.
    batch_buckets: int
    beat_lock_ttl: int
    # Server-side limit on one statement of a run; 0 leaves the server's default.
    statement_timeout: int
    # A run whose database has not answered its lease heartbeat for this long is aborted with an
    # error (a frozen server still accepts TCP, so neither keepalives nor timeouts see it).
    unresponsive_timeout: int
    # The longest a scrape waits for the database health read.
    health_timeout: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        broker = env.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0"
        # Five minutes: how long a task lost with its worker waits to be handed out again. A
        # backfill longer than the time limit stops at its soft limit and resumes in a new attempt.
        visibility = int(_number(env, "OBSERVABILITY_VISIBILITY_TIMEOUT", 300, minimum=5))
        backoff_max = int(_number(env, "OBSERVABILITY_RETRY_BACKOFF_MAX", 60, 1))
        default_limit = max(1.0, (visibility - backoff_max) * 0.9)
        time_limit = int(_number(env, "OBSERVABILITY_TASK_TIME_LIMIT", default_limit, minimum=1))
        if time_limit + backoff_max >= visibility:
            raise SettingsError(
                f"OBSERVABILITY_TASK_TIME_LIMIT ({time_limit}s) plus "
                f"OBSERVABILITY_RETRY_BACKOFF_MAX ({backoff_max}s) must be below "
                f"OBSERVABILITY_VISIBILITY_TIMEOUT ({visibility}s)"
            )
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            broker_url=broker,
            result_backend=env.get("CELERY_RESULT_BACKEND") or broker,
            visibility_timeout=visibility,
            time_limit=time_limit,
            soft_time_limit=time_limit * 0.9,
            max_retries=int(_number(env, "OBSERVABILITY_TASK_MAX_RETRIES", 8)),
            retry_backoff=int(_number(env, "OBSERVABILITY_RETRY_BACKOFF", 5, 1)),
            retry_backoff_max=backoff_max,
            metrics_port=int(_number(env, "WORKER_METRICS_PORT", 9808)),
            lease_ttl=int(_number(env, "OBSERVABILITY_LEASE_TTL", 60, minimum=3)),
            batch_buckets=int(_number(env, "OBSERVABILITY_BATCH_BUCKETS", 0)),
            beat_lock_ttl=int(_number(env, "OBSERVABILITY_BEAT_LOCK_TTL", 60, minimum=3)),
            statement_timeout=int(
                _number(env, "OBSERVABILITY_STATEMENT_TIMEOUT", time_limit * 0.9, minimum=0)
            ),
            unresponsive_timeout=int(
                _number(env, "OBSERVABILITY_DB_UNRESPONSIVE_TIMEOUT", 120, minimum=2)
            ),
            health_timeout=_number(env, "OBSERVABILITY_HEALTH_TIMEOUT", 2, minimum=0.1),
        )
