from __future__ import annotations

import pytest

import worker.otlp.admission
from worker.otlp.admission import Admission


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(worker.otlp.admission.time, "monotonic", lambda: now[0])
    return now


def test_past_the_limit_requests_are_refused_until_one_leaves(clock: list[float]) -> None:
    admission = Admission(limit=2)
    assert admission.enter() is None and admission.enter() is None
    assert admission.enter() == 1
    assert admission.in_flight == 2 and admission.refused_total == 1
    admission.leave()
    assert admission.enter() is None
    assert admission.enter() is not None
    assert admission.refused_total == 2


def test_refused_requests_get_successive_seconds_at_the_rate_requests_finish(
    clock: list[float],
) -> None:
    # No history: the limit per second. Later, the rate seen over the last seconds.
    admission = Admission(limit=2, max_retry_after_s=4)
    admission.enter(), admission.enter()
    assert [admission.enter() for _ in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]
    # Never past the longest Retry-After: the next ones are spread over it again.
    assert [admission.enter() for _ in range(3)] == [1, 1, 2]
    clock[0] += 10  # the slots handed out have passed
    for _ in range(12):
        admission.leave()
        admission.enter()
    clock[0] += 2  # 12 requests finished in the last 2 s: 6 a second
    assert [admission.enter() for _ in range(13)] == [1] * 6 + [2] * 6 + [3]


def test_a_limit_below_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 or more"):
        Admission(limit=0)
    with pytest.raises(ValueError, match="at least 1 s"):
        Admission(limit=1, max_retry_after_s=0)
