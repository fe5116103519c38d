from __future__ import annotations

from typing import Any

import psycopg

from worker.models.granularities import BY_LEVEL

RAW_TABLES = ("traces", "spans", "chat_messages", "document_events")
WORKER_TABLES = ("metrics_aggregates", "trace_extents", "aggregation_runs")
LEVELS = ("hourly", "daily", "weekly")


def refresh_closed(conn: psycopg.Connection[Any], rollup: str, level: str) -> None:
    """Refresh a rollup of this level (hourly, daily, weekly) over every closed bucket. Never
    past the bucket holding now: that would move the rollup's watermark ahead of the clock, and
    rows written into the open bucket later (by the next user of the database) would stay out
    of the real-time view."""
    conn.execute(
        "call public.refresh_continuous_aggregate(%s::regclass, null,"
        " public.time_bucket(%s::interval, pg_catalog.now()))",
        [rollup, BY_LEVEL[level].width],
    )


def remove_bench_rows(conn: psycopg.Connection[Any]) -> None:
    """Leave a database given with --database-url as empty as the group found it, so that the
    next group (which refuses a non-empty database) can run on it too. TRUNCATE invalidates
    the rollups over their whole range, so a full refresh empties them level by level."""
    tables = [f"observability.{t}" for t in (*RAW_TABLES, *WORKER_TABLES)]
    conn.execute(f"truncate {', '.join(tables)}")
    for level in LEVELS:
        for source in ("traces", "llm_spans", "document_events"):
            refresh_closed(conn, f"observability.{source}_{level}", level)
