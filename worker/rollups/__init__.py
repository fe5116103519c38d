from __future__ import annotations

from worker.rollups.leases import LeaseBusy, LeaseLost
from worker.rollups.refresh import ConcurrentRefresh
from worker.rollups.service import (
    MissingDatabaseUrl,
    RangeBeyondRetention,
    WindowInFuture,
    aggregate_observability_metrics,
    backfill_metrics,
)
from worker.rollups.windows import InvalidWindow, Window

__all__ = [
    "ConcurrentRefresh",
    "InvalidWindow",
    "LeaseBusy",
    "LeaseLost",
    "MissingDatabaseUrl",
    "RangeBeyondRetention",
    "Window",
    "WindowInFuture",
    "aggregate_observability_metrics",
    "backfill_metrics",
]
