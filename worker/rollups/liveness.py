from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from worker.models import GRANULARITIES

# Runs marked running, per granularity. A run is stuck when no live lease covers its granularity:
# its worker is gone and no run has come since to mark it abandoned and resume its range.
_RUNNING = """
select r.granularity, count(*) as running, count(*) filter (where l.name is null) as stuck
  , extract(epoch from pg_catalog.now() - pg_catalog.min(r.started_at))::float8 as oldest
from observability.aggregation_runs as r
left join observability.worker_leases as l
  on l.name = 'aggregation:' || r.granularity and l.expires_at > pg_catalog.now()
where r.status = 'running'
group by r.granularity
"""
_LEASES = """
select name, holder, task_id, acquired_at, expires_at
  , extract(epoch from pg_catalog.now() - acquired_at)::float8
from observability.worker_leases
where expires_at > pg_catalog.now()
order by name
"""

LEASE_NAMES = tuple(f"aggregation:{g}" for g in GRANULARITIES)


@dataclass(frozen=True)
class RunningRuns:
    granularity: str
    running: int
    stuck: int
    oldest_seconds: float | None


@dataclass(frozen=True)
class HeldLease:
    name: str
    holder: str
    task_id: str | None
    acquired_at: datetime
    expires_at: datetime
    held_seconds: float


def running_runs(conn: psycopg.Connection[Any]) -> list[RunningRuns]:
    found = {row[0]: RunningRuns(*row) for row in conn.execute(_RUNNING).fetchall()}
    return [found.get(g, RunningRuns(g, 0, 0, None)) for g in GRANULARITIES]


def held_leases(conn: psycopg.Connection[Any]) -> list[HeldLease]:
    return [HeldLease(*row) for row in conn.execute(_LEASES).fetchall()]
