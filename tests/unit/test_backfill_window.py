from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from worker.rollups import InvalidWindow
from worker.rollups.service import WindowInFuture, backfill_window

NOW = datetime(2026, 11, 11, 14, 57, 30, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("granularity", "end", "aligned_end"),
    [
        # ending in the bucket that holds now: today's behaviour, the open bucket included
        ("hour", NOW, datetime(2026, 11, 11, 15, tzinfo=UTC)),
        ("day", datetime(2026, 11, 12, tzinfo=UTC), datetime(2026, 11, 12, tzinfo=UTC)),
        ("week", datetime(2026, 11, 15, 23, tzinfo=UTC), datetime(2026, 11, 16, tzinfo=UTC)),
        # a clock 5 minutes ahead of ours may already be in the next hour
        (
            "hour",
            datetime(2026, 11, 11, 15, 30, tzinfo=UTC),
            datetime(2026, 11, 11, 16, tzinfo=UTC),
        ),
    ],
)
def test_a_window_ending_in_the_open_bucket_is_accepted(
    granularity: str, end: datetime, aligned_end: datetime
) -> None:
    window = backfill_window(granularity, NOW - timedelta(days=2), end, NOW)
    assert window.end == aligned_end


@pytest.mark.parametrize(
    ("granularity", "end", "limit"),
    [
        ("hour", datetime(2026, 11, 11, 16, 0, 1, tzinfo=UTC), "2026-11-11T16:00:00+00:00"),
        ("day", datetime(2026, 11, 12, 0, 0, 1, tzinfo=UTC), "2026-11-12T00:00:00+00:00"),
        ("week", datetime(2027, 6, 1, tzinfo=UTC), "2026-11-16T00:00:00+00:00"),
    ],
)
def test_a_window_ending_after_the_open_bucket_is_refused(
    granularity: str, end: datetime, limit: str
) -> None:
    with pytest.raises(WindowInFuture, match=re.escape(f"End at or before {limit}.")):
        backfill_window(granularity, NOW - timedelta(days=2), end, NOW)


def test_a_future_window_is_an_invalid_window() -> None:
    assert issubclass(WindowInFuture, InvalidWindow)  # the CLI's exit code 2, no task retries
