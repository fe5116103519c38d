from __future__ import annotations

from worker.ingest.pricing import COST_SOURCE_KEY, COST_SOURCE_PRICES
from worker.ingest.validation import DEFAULT_LIMITS, Limits
from worker.ingest.writer import Reject, WriteResult, write_batch

__all__ = [
    "COST_SOURCE_KEY",
    "COST_SOURCE_PRICES",
    "DEFAULT_LIMITS",
    "Limits",
    "Reject",
    "WriteResult",
    "write_batch",
]
