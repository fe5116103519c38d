from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg

from worker.rollups.leases import LeaseBusy
from worker.rollups.runs import record_failure
from worker.rollups.windows import InvalidWindow

log = logging.getLogger("worker.rollups")

# Failures that could not be written when they happened (the database was gone), by run id.
_unrecorded: dict[int, str] = {}
_guard = threading.Lock()

# How far back the scheduled run looks for backfills left unfinished.
RESUME_HORIZON = timedelta(days=7)

# The latest backfill of each range of a granularity, when it did not finish. A range whose latest
# run succeeded is complete; one still running belongs to a live worker (the caller has just held
# the granularity's lease and closed the runs of dead ones).
_UNFINISHED = """
select range_start, range_end from (
  select distinct on (range_start, range_end) range_start, range_end, status
  from observability.aggregation_runs
  where kind = 'backfill' and granularity = %s and started_at >= %s
  order by range_start, range_end, started_at desc, id desc
) as latest
where status in ('failed', 'interrupted')
order by range_start
"""


def remember(run_id: int, error: str) -> None:
    with _guard:
        _unrecorded[run_id] = error


def record_unrecorded(conn: psycopg.Connection[Any]) -> None:
    """Write the failures this process could not record when they happened."""
    with _guard:
        pending = dict(_unrecorded)
    for run_id, error in pending.items():
        record_failure(conn, run_id, f"{error} (recorded once the database answered again)")
        with _guard:
            _unrecorded.pop(run_id, None)


def unfinished_backfills(
    conn: psycopg.Connection[Any], granularity: str, now: datetime
) -> list[tuple[datetime, datetime]]:
    rows = conn.execute(_UNFINISHED, [granularity, now - RESUME_HORIZON]).fetchall()
    return [(start, end) for start, end in rows]


Backfill = Callable[..., dict[str, Any]]


def resume_unfinished_backfills(
    granularity: str, url: str, now: datetime, backfill: Backfill
) -> list[dict[str, Any]]:
    """Finish the backfills of this granularity left unfinished in the last RESUME_HORIZON, each
    from where it stopped. Stops at the first one another run holds the lease for."""
    from worker.rollups.connections import connect

    with connect(url) as conn:
        ranges = unfinished_backfills(conn, granularity, now)
    summaries = []
    for start, end in ranges:
        try:
            summaries.append(
                backfill(start, end, granularity, database_url=url, now=now, resume=True)
            )
        except LeaseBusy:
            break
        except InvalidWindow as exc:  # e.g. its start is now past the retention horizon
            log.warning("not resuming the backfill of %s to %s: %s", start, end, exc)
    return summaries
