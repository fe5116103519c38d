from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.rollups.windows import (
    InvalidWindow,
    Window,
    aligned_window,
    bucket_floor,
    default_window,
)
from worker.scheduling.tasks import RETRYABLE
from worker.settings import SettingsError, WorkerSettings


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("granularity", "moment", "floor"),
    [
        ("hour", "2026-03-04 10:59:59", "2026-03-04 10:00"),
        ("day", "2026-03-04 23:59", "2026-03-04 00:00"),
        ("week", "2026-03-04 10:00", "2026-03-02 00:00"),  # Wednesday -> Monday
        ("week", "2026-03-02 00:00", "2026-03-02 00:00"),
        ("week", "2026-03-01 23:59", "2026-02-23 00:00"),  # Sunday -> the Monday before
    ],
)
def test_buckets_start_where_time_bucket_starts_them(
    granularity: str, moment: str, floor: str
) -> None:
    assert bucket_floor(at(moment), granularity) == at(floor)


def test_bucket_floor_works_in_utc_whatever_the_zone_given() -> None:
    # 00:30 in Paris on the 4th is 23:30 UTC on the 3rd: the UTC day is the 3rd
    paris = datetime(2026, 3, 4, 0, 30, tzinfo=ZoneInfo("Europe/Paris"))
    floor = bucket_floor(paris, "day")
    assert floor == at("2026-03-03 00:00")
    assert floor.utcoffset() == timedelta(0)


def test_window_widens_to_whole_buckets() -> None:
    window = aligned_window("day", at("2026-03-04 05:00"), at("2026-03-05 00:01"))
    assert (window.start, window.end, window.buckets) == (
        at("2026-03-04 00:00"),
        at("2026-03-06 00:00"),
        2,
    )


def test_default_window_is_the_latest_complete_bucket_and_the_one_before() -> None:
    window = default_window("hour", at("2026-03-04 10:30"))
    assert (window.start, window.end) == (at("2026-03-04 08:00"), at("2026-03-04 10:00"))
    weekly = default_window("week", at("2026-03-09 02:00"))  # Monday, when beat sends it
    assert (weekly.start, weekly.end) == (at("2026-02-23 00:00"), at("2026-03-09 00:00"))


def test_batches_cover_the_window_without_gaps_or_overlap() -> None:
    window = Window("hour", at("2026-03-01 00:00"), at("2026-03-04 01:00"))
    batches = list(window.batches(30))
    assert [b.buckets for b in batches] == [30, 30, 13]
    assert batches[0].start == window.start and batches[-1].end == window.end
    assert all(a.end == b.start for a, b in zip(batches, batches[1:], strict=False))


@pytest.mark.parametrize(
    ("granularity", "start", "end", "message"),
    [
        ("month", "2026-03-01", "2026-03-02", "unknown granularity 'month'"),
        ("", "2026-03-01", "2026-03-02", "expected one of hour, day, week"),
        ("hour", "2026-03-02", "2026-03-01", "ends before it starts"),
        ("hour", "2026-03-01", "2026-03-01", "ends before it starts"),
    ],
)
def test_bad_windows_are_refused_with_a_clear_message(
    granularity: str, start: str, end: str, message: str
) -> None:
    with pytest.raises(InvalidWindow, match=message):
        aligned_window(granularity, at(start), at(end))


def test_times_without_a_time_zone_are_refused() -> None:
    with pytest.raises(InvalidWindow, match="need a time zone"):
        aligned_window("hour", datetime(2026, 3, 1), datetime(2026, 3, 2))


def test_bad_arguments_are_not_retried_but_outages_are() -> None:
    assert not issubclass(InvalidWindow, RETRYABLE)
    import psycopg

    assert issubclass(psycopg.OperationalError, RETRYABLE)


def test_settings_defaults_keep_time_limits_below_the_visibility_timeout() -> None:
    settings = WorkerSettings.from_env({})
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    # a task lost with its worker is handed out again within five minutes
    assert settings.soft_time_limit < settings.time_limit < settings.visibility_timeout == 300
    # a retry's countdown is spent unacknowledged too
    assert settings.time_limit + settings.retry_backoff_max < settings.visibility_timeout
    # a dead worker's lease blocks the redelivered task for a minute at most
    assert settings.lease_ttl == 60
    # the database gives up on a statement before the task's time limit stops the task
    assert 0 < settings.statement_timeout < settings.soft_time_limit
    assert settings.database_url is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OBSERVABILITY_VISIBILITY_TIMEOUT": "soon"}, "must be a number"),
        ({"OBSERVABILITY_VISIBILITY_TIMEOUT": "2"}, "at least 5"),
        (
            {"OBSERVABILITY_VISIBILITY_TIMEOUT": "60", "OBSERVABILITY_TASK_TIME_LIMIT": "60"},
            "must be below OBSERVABILITY_VISIBILITY_TIMEOUT",
        ),
        ({"OBSERVABILITY_TASK_MAX_RETRIES": "-1"}, "at least 0"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        WorkerSettings.from_env(env)


def test_window_summary_is_iso_8601() -> None:
    window = Window("hour", at("2026-03-01 00:00"), at("2026-03-01 00:00") + timedelta(hours=2))
    assert window.as_dict() == {
        "start": "2026-03-01T00:00:00+00:00",
        "end": "2026-03-01T02:00:00+00:00",
    }
