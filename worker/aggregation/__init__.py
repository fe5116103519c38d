from __future__ import annotations

from worker.aggregation.leases import LeaseBusy, LeaseLost
from worker.aggregation.refresh import ConcurrentRefresh
from worker.aggregation.service import (
    MissingDatabaseUrl,
    RangeBeyondRetention,
    WindowInFuture,
    aggregate_observability_metrics,
    backfill_metrics,
)
from worker.aggregation.windows import InvalidWindow, Window

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
