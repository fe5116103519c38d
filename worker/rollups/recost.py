from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from worker.ingest.pricing import COST_SOURCE_KEY, COST_SOURCE_PRICES
from worker.ingest.time_policy import lower_bound
from worker.ingest.traces import SPANS_MARK, Extents, Window, lock_traces, update_totals
from worker.models.granularities import CATALOGUE, rollup_name
from worker.rollups.refresh import refresh_bounds, refresh_rollup, retry_busy
from worker.rollups.windows import bucket_floor
from worker.schema.retention import raw_horizon

# A refresh policy busy with an overlapping window ends soon: wait it out this many times.
REFRESH_RETRIES = 3

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
  returning s.trace_id, s.started_at, s.cost_usd
)
select pg_catalog.count(*), pg_catalog.sum(cost_usd), pg_catalog.min(started_at),
  pg_catalog.max(started_at), pg_catalog.array_agg(distinct trace_id)
from changed
"""
# Traces whose totals are sums over their spans (marked so by the OTLP endpoint) are all summed
# again, whether or not one of their spans changed now: a run also repairs totals that an
# earlier version or a failed run left behind. Trace costs the application sent are not marked
# and stay as they are.
WINDOW_TRACES_SQL = """
select t.trace_id from observability.traces as t
where t.started_at >= %(start)s and t.started_at < %(end)s
  and t.attributes @> %(spans_marker)s::jsonb
"""
TRACE_COSTS_SQL = """
select t.trace_id, t.started_at, t.cost_usd from observability.traces as t
where t.trace_id = any(%s::text[]) and t.started_at >= %s and t.started_at <= %s
"""


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
    traces_changed: int = 0  # traces whose cost, the sum of their spans', changed
    first_trace: datetime | None = None
    last_trace: datetime | None = None
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
    """Price the window's spans again from observability.model_prices, sum the costs of their
    traces again where those are sums of span costs, then refresh the LLM span and trace
    rollups. conn must be in autocommit mode (continuous aggregates refuse to refresh inside a
    transaction). A dry run rolls the updates back and refreshes nothing.

    The rollups are refreshed over the whole window (aligned to their buckets) even when no
    cost changed, so that running recost again repairs rollups a failed refresh left behind.
    """
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
        assert after is not None
        traces = _sum_traces(conn, start, end, after[4] or [])
    assert before is not None
    result.candidates, result.cost_before = before[0], before[1] or Decimal(0)
    result.changed, result.cost_after = after[0], after[1] or Decimal(0)
    result.first_changed, result.last_changed = after[2], after[3]
    result.traces_changed, result.first_trace, result.last_trace = traces
    if dry_run:
        return result
    last = end - timedelta(microseconds=1)
    trace_first = min(start, result.first_trace or start)
    trace_last = max(last, result.last_trace or last)
    now = datetime.now(UTC)
    horizon = raw_horizon(conn, now)
    # The rollups over span costs and over trace costs, lowest level first: each level is
    # refreshed from the one below.
    for source, first, final in (("llm_spans", start, last), ("traces", trace_first, trace_last)):
        for granularity in CATALOGUE:
            unit, rollup = granularity.name, rollup_name(source, granularity.name)
            # Whole buckets, but never a still-open one (it stays real-time) and never hourly
            # buckets whose raw rows retention may have dropped.
            bounds = refresh_bounds(
                unit,
                bucket_floor(first, unit),
                bucket_floor(final, unit) + granularity.width,
                now=now,
                raw_horizon=horizon,
            )
            if bounds is None:
                continue
            window = Refresh(rollup, *bounds)
            _refresh(conn, window, sleep)
            result.refreshed.append(window)
    return result


def _sum_traces(
    conn: psycopg.Connection[Any], start: datetime, end: datetime, changed: list[str]
) -> tuple[int, datetime | None, datetime | None]:
    """Sum the window's span-summed traces and those of the changed spans again; returns how
    many traces' costs changed and their earliest and latest start."""
    horizon = lower_bound(raw_horizon(conn, datetime.now(UTC)))
    with conn.cursor() as cur:
        cur.execute(WINDOW_TRACES_SQL, {"start": start, "end": end, "spans_marker": SPANS_MARK})
        ids = {trace_id for (trace_id,) in cur} | set(changed)
        lock_traces(cur, ids)
        window = Extents(cur, ids).window(horizon)
        if window is None:
            return 0, None, None
        before = _costs(cur, ids, window)
        update_totals(cur, ids, window)
        after = _costs(cur, ids, window)
    moved = [started for key, (started, cost) in after.items() if before[key][1] != cost]
    return len(moved), min(moved, default=None), max(moved, default=None)


def _costs(
    cur: psycopg.Cursor[Any], ids: set[str], window: Window
) -> dict[str, tuple[datetime, Decimal | None]]:
    cur.execute(TRACE_COSTS_SQL, [sorted(ids), window.first, window.last])
    return {trace_id: (started, cost) for trace_id, started, cost in cur}


def _refresh(
    conn: psycopg.Connection[Any], window: Refresh, sleep: Callable[[float], None]
) -> None:
    retry_busy(
        lambda: refresh_rollup(conn, window.rollup, window.start, window.end),
        REFRESH_RETRIES,
        sleep=sleep,
    )
