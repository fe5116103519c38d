from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any


def create_aggregation_run(**overrides: Any) -> dict[str, Any]:
    """A finished backfill of two days at hour granularity."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    row: dict[str, Any] = {
        "kind": "backfill",
        "granularity": "hour",
        "range_start": start,
        "range_end": start + timedelta(days=2),
        "done_until": start + timedelta(days=2),
        "status": "succeeded",
        "buckets": 48,
        "metrics_created": random.randint(0, 5000),
        "metrics_updated": 0,
        "metrics_deleted": 0,
        "error": None,
        "started_at": datetime.now(UTC) - timedelta(minutes=5),
        "finished_at": datetime.now(UTC),
    }
    row.update(overrides)
    return row


def create_worker_lease(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "name": f"aggregation:test-{random.randint(0, 10**9)}",
        "holder": "host:1234:abcd",
        "acquired_at": now,
        "expires_at": now + timedelta(minutes=10),
    }
    row.update(overrides)
    return row
