from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.rollups.stale import StaleStatus, noted_windows
from worker.rollups.windows import Window

H = timedelta(hours=1)
T0 = datetime(2026, 11, 12, 10, tzinfo=UTC)


def test_adjacent_buckets_form_one_window_and_gaps_split() -> None:
    rows = [(T0, [1, 7]), (T0 + H, [2]), (T0 + 2 * H, [3]), (T0 + 5 * H, [4])]
    assert list(noted_windows(rows, "hour")) == [
        (Window("hour", T0, T0 + 3 * H), [1, 7, 2, 3]),
        (Window("hour", T0 + 5 * H, T0 + 6 * H), [4]),
    ]


def test_a_run_of_buckets_is_cut_at_the_batch_size() -> None:
    rows = [(T0 + i * H, [i]) for i in range(5)]
    assert list(noted_windows(rows, "hour", size=2)) == [
        (Window("hour", T0, T0 + 2 * H), [0, 1]),
        (Window("hour", T0 + 2 * H, T0 + 4 * H), [2, 3]),
        (Window("hour", T0 + 4 * H, T0 + 5 * H), [4]),
    ]


def test_days_and_weeks_use_their_own_width() -> None:
    day, week = timedelta(days=1), timedelta(weeks=1)
    monday = datetime(2026, 11, 9, tzinfo=UTC)
    assert list(noted_windows([(monday, [1]), (monday + week, [2])], "week")) == [
        (Window("week", monday, monday + 2 * week), [1, 2])
    ]
    assert list(noted_windows([(monday, [1]), (monday + 2 * day, [2])], "day")) == [
        (Window("day", monday, monday + day), [1]),
        (Window("day", monday + 2 * day, monday + 3 * day), [2]),
    ]


def test_nothing_noted_gives_no_window() -> None:
    assert list(noted_windows([], "day")) == []


def test_waiting_is_measured_from_the_oldest_note() -> None:
    status = StaleStatus("hour", 2, 3, T0, T0 + H)
    assert status.waiting(T0 + 3 * H) == 2 * H
    assert StaleStatus("hour", 0, 0, None, None).waiting(T0) == timedelta(0)
    # a note stamped by a clock a little ahead of ours has not waited a negative time
    assert status.waiting(T0) == timedelta(0)
