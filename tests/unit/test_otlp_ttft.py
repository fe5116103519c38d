from __future__ import annotations

from typing import Any

import pytest

from tests.otlp_encode import make_request, make_span
from worker.otlp.mapping import map_request

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
CHILD = "00f067aa0ba902b7"
START = 1_767_225_600_000_000_000
MS = 1_000_000
OPENLLMETRY = "gen_ai.content.completion.chunk"
OPENLLMETRY_OLDER = "llm.content.completion.chunk"


def mapped(
    attributes: dict[str, Any] | None = None, events: tuple[tuple[str, int | None], ...] = ()
) -> dict[str, Any]:
    """The spans row of a 2-second chat span; events are (name, ns after the start)."""
    span = make_span(TRACE, CHILD, "chat gpt-4o", START, START + 2_000 * MS,
                     parent_span_id=ROOT, attributes=attributes)  # fmt: skip
    for name, offset in events:
        span.events.add(name=name, time_unix_nano=START + offset if offset is not None else 0)
    batch = map_request(make_request([span]))
    assert batch.rejected == []
    [row] = batch.spans
    return row


def test_time_to_first_chunk_attribute() -> None:
    row = mapped({"gen_ai.response.time_to_first_chunk": 0.42})
    assert row["time_to_first_token_ms"] == 420
    assert "gen_ai.response.time_to_first_chunk" not in row["attributes"]


def test_older_server_time_to_first_token_attribute() -> None:
    assert mapped({"gen_ai.server.time_to_first_token": 0.25})["time_to_first_token_ms"] == 250


def test_time_to_first_chunk_wins_over_the_older_name() -> None:
    row = mapped(
        {"gen_ai.server.time_to_first_token": 0.25, "gen_ai.response.time_to_first_chunk": 0.42}
    )
    assert row["time_to_first_token_ms"] == 420
    assert row["attributes"]["gen_ai.server.time_to_first_token"] == 0.25


@pytest.mark.parametrize("name", [OPENLLMETRY, OPENLLMETRY_OLDER])
def test_first_stream_chunk_event(name: str) -> None:
    events = (name, 350 * MS), (name, 300 * MS), (name, 1_900 * MS)
    assert mapped(events=events)["time_to_first_token_ms"] == 300


def test_chunk_event_time_is_rounded_to_the_millisecond() -> None:
    assert mapped(events=((OPENLLMETRY, 123_600_000),))["time_to_first_token_ms"] == 124
    assert mapped(events=((OPENLLMETRY, 123_400_000),))["time_to_first_token_ms"] == 123


def test_chunk_events_before_the_span_start_are_ignored() -> None:
    events = (OPENLLMETRY, -50 * MS), (OPENLLMETRY, None), (OPENLLMETRY, 80 * MS)
    assert mapped(events=events)["time_to_first_token_ms"] == 80
    only_before = ((OPENLLMETRY, -50 * MS),)
    assert mapped(events=only_before)["time_to_first_token_ms"] is None


def test_other_events_are_not_chunks() -> None:
    events = ("exception", 10 * MS), ("gen_ai.choice", 20 * MS), ("chunk", 30 * MS)
    assert mapped(events=events)["time_to_first_token_ms"] is None


def test_an_attribute_wins_over_chunk_events() -> None:
    row = mapped({"gen_ai.response.time_to_first_chunk": 0.42}, ((OPENLLMETRY, 300 * MS),))
    assert row["time_to_first_token_ms"] == 420
    row = mapped({"gen_ai.server.time_to_first_token": 0.25}, ((OPENLLMETRY, 300 * MS),))
    assert row["time_to_first_token_ms"] == 250


@pytest.mark.parametrize("value", [-0.1, "fast", True])
def test_an_unusable_attribute_stays_and_chunk_events_decide(value: Any) -> None:
    row = mapped({"gen_ai.response.time_to_first_chunk": value}, ((OPENLLMETRY, 300 * MS),))
    assert row["time_to_first_token_ms"] == 300
    assert row["attributes"]["gen_ai.response.time_to_first_chunk"] == value


def test_no_source_leaves_the_column_empty() -> None:
    assert mapped({"gen_ai.request.model": "gpt-4o"})["time_to_first_token_ms"] is None
