from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from worker.ingest.pricing import COST_SOURCE_KEY, COST_SOURCE_PRICES

# The LLM span rollups, lowest level first: each level is refreshed from the one below.
ROLLUPS = (
    ("observability.llm_spans_hourly", "hour"),
    ("observability.llm_spans_daily", "day"),
    ("observability.llm_spans_weekly", "week"),
)
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
REFRESH_ATTEMPTS = 3
REFRESH_RETRY_S = 2.0

# Spans in the window that name a model and whose cost is not the application's own: costs
# computed from the price table (marked) and spans still without a cost (no price at ingest).
# Each is priced again with the row of model_prices in effect at its start; rows whose cost
# changes are updated. A span that loses its price (rows deleted) gets a NULL cost.
# Two statements rather than one with a data-modifying CTE: when the UPDATE decompresses
# compressed chunks, a CTE reading the same table in that statement sees none of their rows.
CANDIDATES = """
s.started_at >= %(start)s and s.started_at < %(end)s and s.model is not null
and (%(model)s::text is null or s.model = %(model)s::text)
and (s.cost_usd is null or s.attributes @> %(marker)s::jsonb)
"""
NEW_COST = """
(select observability.token_cost_usd(s.input_tokens, s.output_tokens,
   p.input_usd_per_million, p.output_usd_per_million)
 from observability.model_price_at(s.model, s.provider, s.started_at) as p)
"""
BEFORE_SQL = f"""
select pg_catalog.count(*),
  pg_catalog.sum(s.cost_usd) filter (where {NEW_COST} is distinct from s.cost_usd)
from observability.spans as s
where {CANDIDATES}
"""
UPDATE_SQL = f"""
with changed as (
  update observability.spans as s
  set cost_usd = {NEW_COST},
    attributes = case when {NEW_COST} is null then s.attributes - %(key)s::text
      else s.attributes || %(marker)s::jsonb end
  where {CANDIDATES} and {NEW_COST} is distinct from s.cost_usd
  returning s.started_at, s.cost_usd
)
select pg_catalog.count(*), pg_catalog.sum(cost_usd), pg_catalog.min(started_at),
  pg_catalog.max(started_at)
from changed
"""
REFRESH_SQL = "call public.refresh_continuous_aggregate(%s::regclass, %s, %s)"


class RecostError(ValueError):
    """The arguments make no sense (end before start, ...)."""


@dataclass(frozen=True)
class Refresh:
    rollup: str
    start: datetime
    end: datetime


@dataclass
class RecostResult:
    start: datetime
    end: datetime
    model: str | None
    dry_run: bool
    candidates: int = 0  # spans whose cost comes from the price table, or is missing
    changed: int = 0
    cost_before: Decimal = Decimal(0)  # sums over the changed spans
    cost_after: Decimal = Decimal(0)
    first_changed: datetime | None = None
    last_changed: datetime | None = None
    refreshed: list[Refresh] = field(default_factory=list)


def recost(
    conn: psycopg.Connection[Any],
    start: datetime,
    end: datetime,
    *,
    model: str | None = None,
    dry_run: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> RecostResult:
    """Price the window's spans again from observability.model_prices, then refresh the LLM
    span rollups over the buckets that changed. conn must be in autocommit mode (continuous
    aggregates refuse to refresh inside a transaction). A dry run rolls the update back."""
    if start.utcoffset() is None or end.utcoffset() is None:
        raise RecostError("start and end must carry a time zone")
    if end <= start:
        raise RecostError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    if not conn.autocommit:
        raise RecostError("recost needs a connection in autocommit mode")
    result = RecostResult(start, end, model, dry_run)
    params = {
        "start": start,
        "end": end,
        "model": model,
        "key": COST_SOURCE_KEY,
        "marker": f'{{"{COST_SOURCE_KEY}": "{COST_SOURCE_PRICES}"}}',
    }
    with conn.transaction(force_rollback=dry_run):
        before = conn.execute(BEFORE_SQL, params).fetchone()
        after = conn.execute(UPDATE_SQL, params).fetchone()
    assert before is not None and after is not None
    result.candidates, result.cost_before = before[0], before[1] or Decimal(0)
    result.changed, result.cost_after = after[0], after[1] or Decimal(0)
    result.first_changed, result.last_changed = after[2], after[3]
    if dry_run or result.first_changed is None or result.last_changed is None:
        return result
    for rollup, unit in ROLLUPS:
        window = Refresh(
            rollup,
            bucket_start(result.first_changed, unit),
            bucket_start(result.last_changed, unit) + STEP[unit],
        )
        _refresh(conn, window, sleep)
        result.refreshed.append(window)
    return result


def bucket_start(moment: datetime, unit: str) -> datetime:
    """The start of the UTC bucket holding moment; weeks start on Monday, as time_bucket's."""
    utc = moment.astimezone(UTC)
    if unit == "hour":
        return utc.replace(minute=0, second=0, microsecond=0)
    day = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    raise ValueError(f"unknown bucket unit {unit!r}")


def _refresh(
    conn: psycopg.Connection[Any], window: Refresh, sleep: Callable[[float], None]
) -> None:
    for attempt in range(1, REFRESH_ATTEMPTS + 1):
        try:
            conn.execute(REFRESH_SQL, [window.rollup, window.start, window.end])
            return
        except psycopg.errors.LockNotAvailable:
            # 55P03: a refresh policy is busy with an overlapping window; it ends soon.
            if attempt == REFRESH_ATTEMPTS:
                raise
            sleep(REFRESH_RETRY_S * attempt)
