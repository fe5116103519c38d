from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

# The bucket sizes of the rollups. The database holds the same catalogue as the view
# observability.granularities (sql/idempotent/003-granularities.sql), where the refresh policies
# read it; tests/migration/test_granularities.py holds this mirror equal to it.


@dataclass(frozen=True)
class Granularity:
    name: str  # hour, day, week: the value in metrics_aggregates.granularity
    level: str  # hourly, daily, weekly: the suffix of its continuous aggregates
    width: timedelta
    # Buckets refreshed and synced per transaction-sized batch: a long backfill commits (and can
    # be resumed) after each batch, and no single refresh holds the rollup for long.
    batch_buckets: int
    # How far a scheduled run reaches back to where the last successful one stopped.
    catch_up_buckets: int


CATALOGUE: tuple[Granularity, ...] = (
    Granularity("hour", "hourly", timedelta(hours=1), batch_buckets=72, catch_up_buckets=7 * 24),
    Granularity("day", "daily", timedelta(days=1), batch_buckets=14, catch_up_buckets=31),
    Granularity("week", "weekly", timedelta(weeks=1), batch_buckets=4, catch_up_buckets=8),
)
GRANULARITIES: tuple[str, ...] = tuple(g.name for g in CATALOGUE)
BY_NAME: dict[str, Granularity] = {g.name: g for g in CATALOGUE}
BY_LEVEL: dict[str, Granularity] = {g.level: g for g in CATALOGUE}
# The raw tables with continuous aggregates at every level, named <source>_<level>.
ROLLUP_SOURCES: tuple[str, ...] = ("traces", "llm_spans", "document_events")


def rollup_name(source: str, granularity: str) -> str:
    return f"observability.{source}_{BY_NAME[granularity].level}"


def levels_up_to(granularity: str) -> tuple[Granularity, ...]:
    """The levels a rollup of this granularity is built from, lowest first: day rolls up
    hourly rows and week rolls up daily rows."""
    position = GRANULARITIES.index(granularity)
    return CATALOGUE[: position + 1]
