from __future__ import annotations

import pytest

from worker.rollups.leases import LeaseBusy
from worker.rollups.refresh import ConcurrentRefresh, retry_busy


def test_a_busy_rollup_is_tried_again_with_doubling_pauses() -> None:
    pauses: list[float] = []
    outcomes: list[BaseException | str] = [
        ConcurrentRefresh("busy"),
        ConcurrentRefresh("busy"),
        "done",
    ]

    def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert retry_busy(attempt, 5, sleep=pauses.append) == "done"
    assert pauses == [1.0, 2.0]


def test_after_its_retries_the_last_busy_error_goes_to_the_caller() -> None:
    pauses: list[float] = []
    calls = 0

    def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ConcurrentRefresh(f"busy {calls}")

    with pytest.raises(ConcurrentRefresh, match="busy 4"):
        retry_busy(attempt, 3, sleep=pauses.append)
    assert pauses == [1.0, 2.0, 4.0]


def test_only_the_named_busy_errors_are_retried() -> None:
    pauses: list[float] = []

    def lease_taken() -> None:
        raise LeaseBusy("aggregation:hour", "another worker", None)

    with pytest.raises(LeaseBusy):
        retry_busy(lease_taken, 3, sleep=pauses.append)
    assert pauses == [], "LeaseBusy is not busy unless the caller says so"
    with pytest.raises(LeaseBusy):
        retry_busy(lease_taken, 2, busy=(ConcurrentRefresh, LeaseBusy), sleep=pauses.append)
    assert pauses == [1.0, 2.0]

    def broken() -> None:
        raise ValueError("not a busy rollup")

    with pytest.raises(ValueError):
        retry_busy(broken, 3, sleep=pauses.append)
    assert pauses == [1.0, 2.0]
