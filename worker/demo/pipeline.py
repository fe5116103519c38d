from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from tqdm import tqdm

from worker.demo.workload import MARKER, RATE_MARKER, Batch, Generator, Prices
from worker.ingest import write_batch
from worker.models.granularities import GRANULARITIES
from worker.rollups import (
    ConcurrentRefresh,
    LeaseBusy,
    aggregate_observability_metrics,
    backfill_metrics,
)
from worker.rollups.refresh import retry_busy
from worker.rollups.sync import SyncCounts
from worker.rollups.windows import Window, aligned_window, bucket_ceil, bucket_floor

WRITE_BATCH_ROWS = 4000
# The scheduled hourly run syncs the latest two complete hours, so late rows land there.
LATE_HOURS = 2
# A policy job of the engine may be refreshing the same rollup: the scheduled run then leaves
# retrying to its caller (Celery in production, this loop in the demo).
SCHEDULED_ATTEMPTS = 6

_PRICES = """
select distinct on (model) model, input_usd_per_million, output_usd_per_million
from observability.model_prices
where effective_from <= pg_catalog.now()
order by model, effective_from desc
"""
_EXISTING = f"""
select pg_catalog.count(*), pg_catalog.min(started_at), pg_catalog.max(started_at),
  pg_catalog.min((attributes ->> '{MARKER}')::bigint),
  pg_catalog.min((attributes ->> '{RATE_MARKER}')::float8)
from observability.traces
where attributes ? '{MARKER}'
"""


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Existing:
    traces: int
    start: datetime  # first hour holding demo traces
    end: datetime  # the hour after the last one
    seed: int
    traces_per_hour: float | None  # None for a workload stored before the rate was recorded


@dataclass
class Written:
    traces: int = 0
    spans: int = 0
    chat_messages: int = 0
    document_events: int = 0

    def add(self, written: dict[str, int]) -> None:
        self.traces += written.get("trace", 0)
        self.spans += written.get("span", 0)
        self.chat_messages += written.get("chat_message", 0)
        self.document_events += written.get("document_event", 0)

    @property
    def rows(self) -> int:
        return self.traces + self.spans + self.chat_messages + self.document_events


@dataclass(frozen=True)
class LateRows:
    start: datetime  # the hours the late rows were written into
    end: datetime
    synced_start: datetime  # the window the scheduled hourly run synced
    synced_end: datetime
    traces: int
    metrics_updated: int
    metrics_created: int


def load_prices(conn: psycopg.Connection[Any]) -> Prices:
    return {model: (Decimal(i), Decimal(o)) for model, i, o in conn.execute(_PRICES).fetchall()}


def existing_workload(conn: psycopg.Connection[Any]) -> Existing | None:
    row = conn.execute(_EXISTING).fetchone()
    if row is None or not row[0]:
        return None
    count, first, last, seed, rate = row
    return Existing(count, bucket_floor(first, "hour"), bucket_ceil(last, "hour"), int(seed), rate)


def write_all(conn: psycopg.Connection[Any], batches: Iterable[Batch]) -> Written:
    """Write the batches through the bulk writer, about WRITE_BATCH_ROWS rows per transaction."""
    written = Written()
    pending = Batch()
    for batch in batches:
        pending.traces += batch.traces
        pending.spans += batch.spans
        pending.chat_messages += batch.chat_messages
        pending.document_events += batch.document_events
        if pending.rows >= WRITE_BATCH_ROWS:
            _write(conn, pending, written)
            pending = Batch()
    if pending.rows:
        _write(conn, pending, written)
    return written


def _write(conn: psycopg.Connection[Any], batch: Batch, written: Written) -> None:
    result = write_batch(
        conn,
        traces=batch.traces,
        spans=batch.spans,
        chat_messages=batch.chat_messages,
        document_events=batch.document_events,
    )
    if result.rejected:
        first = result.rejected[0]
        raise DemoError(
            f"the writer rejected {len(result.rejected)} generated rows, the first "
            f"({first.kind} #{first.index}) because {first.reason}"
        )
    written.add(result.written)


def generate(
    conn: psycopg.Connection[Any],
    generator: Generator,
    start: datetime,
    end: datetime,
    *,
    show_progress: bool = True,
) -> Written:
    hours = int((end - start) / timedelta(hours=1))
    with tqdm(total=hours, desc="generating", unit="h", disable=not show_progress) as bar:

        def batches() -> Iterable[Batch]:
            traces = 0
            for _, batch in generator.hours(start, end):
                traces += len(batch.traces)
                yield batch
                bar.set_postfix(traces=f"{traces:,}", refresh=False)
                bar.update()

        return write_all(conn, batches())


def sync(
    url: str,
    start: datetime,
    end: datetime,
    granularities: Iterable[str] = GRANULARITIES,
    *,
    label: str = "syncing",
    show_progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Refresh the rollups and sync metrics_aggregates over [start, end), level by level."""
    summaries = {}
    for granularity in granularities:
        window = aligned_window(granularity, start, end)
        with tqdm(
            total=window.buckets,
            desc=f"{label} {granularity:<4}",
            unit=granularity[0],
            disable=not show_progress,
        ) as bar:
            summaries[granularity] = backfill_metrics(
                window.start, window.end, granularity, database_url=url, progress=_bar(bar)
            )
    return summaries


def _bar(bar: tqdm[Any]) -> Callable[[Window, SyncCounts], None]:
    def progress(batch: Window, counts: SyncCounts) -> None:
        bar.set_postfix(created=counts.created, updated=counts.updated)
        bar.update(batch.buckets)

    return progress


def late_rows(
    conn: psycopg.Connection[Any],
    url: str,
    generator: Generator,
    end: datetime,
) -> LateRows:
    """Traces for the last two complete hours, already synced, then the scheduled hourly run.

    The run is the one beat sends every hour (no start or end: the latest two complete hours,
    and further back only after missed runs), evaluated as of end so that it covers exactly
    those hours even when the clock has passed the next hour meanwhile.
    """
    start = end - timedelta(hours=LATE_HOURS)
    traces = max(3, round(generator.traces_per_hour / 2))
    written = write_all(conn, [generator.late_rows(start, end, traces)])
    hourly = scheduled_run(url, "hour", end)
    window = hourly["window"]
    return LateRows(
        start=start,
        end=end,
        synced_start=datetime.fromisoformat(window["start"]),
        synced_end=datetime.fromisoformat(window["end"]),
        traces=written.traces,
        metrics_updated=int(hourly["metrics_updated"]),
        metrics_created=int(hourly["metrics_created"]),
    )


def scheduled_run(url: str, granularity: str, now: datetime) -> dict[str, Any]:
    return retry_busy(
        lambda: aggregate_observability_metrics(granularity, database_url=url, now=now),
        SCHEDULED_ATTEMPTS - 1,
        busy=(ConcurrentRefresh, LeaseBusy),
    )
