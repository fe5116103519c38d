from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from worker.ingest import DEFAULT_LIMITS, Reject, write_batch

# Recent, so that no compression or retention policy touches the rows during a test.
START = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
EVENTS = "select * from observability.span_events order by span_id, event_index"


@pytest.fixture
def db(clean_observability: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(clean_observability, autocommit=True) as connection:
        yield connection


def read(db: psycopg.Connection, query: str, params: Any = ()) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def span(n: int, **changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": f"{n:016x}",
        "started_at": START + timedelta(seconds=n),
        "ended_at": START + timedelta(seconds=n + 1),
        "name": "execute_tool search",
        "span_type": "tool",
    }
    item.update(changes)
    return item


def event(n: int, index: int, name: str = "gen_ai.tool.message", **changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": f"{n:016x}",
        "event_index": index,
        "occurred_at": START + timedelta(seconds=n, milliseconds=10 * (index + 1)),
        "name": name,
        "attributes": {"gen_ai.tool.name": "search", "i": index},
    }
    item.update(changes)
    return item


def test_events_are_written_with_their_span_and_replaced_with_it(
    db: psycopg.Connection,
) -> None:
    result = write_batch(db, spans=[span(1), span(2)], span_events=[event(1, 0), event(1, 1)])
    assert result.rejected == [] and result.written["span_event"] == 2
    rows = read(db, EVENTS)
    assert [(r["span_id"], r["event_index"], r["span_started_at"]) for r in rows] == [
        (f"{1:016x}", 0, START + timedelta(seconds=1)),
        (f"{1:016x}", 1, START + timedelta(seconds=1)),
    ]
    assert rows[1]["attributes"] == {"gen_ai.tool.name": "search", "i": 1}

    # The same again: nothing changes, nothing counts as written.
    again = write_batch(db, spans=[span(1), span(2)], span_events=[event(1, 0), event(1, 1)])
    assert again.written["span_event"] == 0 and read(db, EVENTS) == rows

    # Span 1 re-sent with one changed event, span 2 with a first one.
    changed = event(1, 0, "guardrail.decision", attributes={"decision": "block"})
    result = write_batch(db, spans=[span(1), span(2)], span_events=[changed, event(2, 0)])
    assert result.written["span_event"] == 2
    rows = read(db, EVENTS)
    assert [(r["span_id"], r["event_index"], r["name"]) for r in rows] == [
        (f"{1:016x}", 0, "guardrail.decision"),
        (f"{2:016x}", 0, "gen_ai.tool.message"),
    ]

    # Without span_events the stored events stay; with an empty list they go.
    write_batch(db, spans=[span(1), span(2)])
    assert len(read(db, EVENTS)) == 2
    write_batch(db, spans=[span(2)], span_events=[])
    assert [r["span_id"] for r in read(db, EVENTS)] == [f"{1:016x}"]


def test_events_follow_a_span_that_moves(db: psycopg.Connection) -> None:
    write_batch(db, spans=[span(1)], span_events=[event(1, 0), event(1, 1)])
    later = START + timedelta(hours=20)
    result = write_batch(
        db, spans=[span(1, started_at=later, ended_at=None)], span_events=[event(1, 1)]
    )
    assert result.rejected == []
    rows = read(db, EVENTS)
    assert [(r["event_index"], r["span_started_at"]) for r in rows] == [(1, later)]
    assert read(db, "select count(*) as n from observability.spans") == [{"n": 1}]


def test_bad_events_are_refused_with_their_reason(db: psycopg.Connection) -> None:
    limit = DEFAULT_LIMITS.max_events_per_span
    bad_span = span(3, span_type="nonsense")
    result = write_batch(
        db,
        spans=[span(1), bad_span],
        span_events=[
            event(1, 0),
            event(9, 0),  # no such span in the batch
            event(3, 0),  # its span is refused
            event(1, limit),
            event(1, 1, name=""),
            {**event(1, 2), "span_started_at": START},
            event(1, 3, occurred_at="yesterday"),
        ],
    )
    reasons = {r.index: r.reason for r in result.rejected if r.kind == "span_event"}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert "not among the batch's valid spans" in reasons[1] and f"{9:016x}" in reasons[1]
    assert "not among the batch's valid spans" in reasons[2]
    assert reasons[3] == f"event_index {limit} is past the {limit} events stored per span"
    assert reasons[4] == "name must not be empty"
    assert "span_started_at is the start of the event's span" in reasons[5]
    assert "occurred_at must be an ISO 8601 time" in reasons[6]
    assert [r["event_index"] for r in read(db, EVENTS)] == [0]


def test_links_are_stored_and_checked(db: psycopg.Connection) -> None:
    link = {"trace_id": OTHER_TRACE, "span_id": "00f067aa0ba902b7", "attributes": {"k": "v"}}
    too_many = [link] * (DEFAULT_LIMITS.max_links_per_span + 1)
    result = write_batch(
        db,
        spans=[
            span(1, links=[link]),
            span(2, links=too_many),
            span(3, links=[{**link, "span_id": "xyz"}]),
            span(4, links=[{**link, "color": "red"}]),
        ],
    )
    reasons = {r.index: r.reason for r in result.rejected}
    assert reasons == {
        1: "links holds 129 links, more than the 128 stored per span",
        2: "links[0].span_id must be 16 lowercase hex digits, got 'xyz'",
        3: "links[0] has unknown field(s) 'color'",
    }
    assert read(db, "select links from observability.spans") == [{"links": [link]}]
    # The linked trace has no stored span: its incoming links are looked for in a given window.
    links = "select * from observability.trace_links(%s, %s, %s)"
    assert read(db, links, [OTHER_TRACE, None, None]) == []
    window = [OTHER_TRACE, START - timedelta(hours=1), START + timedelta(hours=1)]
    rows = read(db, links, window)
    assert [(r["direction"], r["trace_id"], r["linked_span_id"]) for r in rows] == [
        ("in", TRACE_ID, "00f067aa0ba902b7")
    ]


def test_rejects_name_their_kind(db: psycopg.Connection) -> None:
    result = write_batch(db, spans=[span(1)], span_events=[event(2, 0)])
    assert [r.kind for r in result.rejected] == ["span_event"]
    assert isinstance(result.rejected[0], Reject)


def test_events_in_compressed_chunks_are_replaced(db: psycopg.Connection) -> None:
    write_batch(db, spans=[span(1)], span_events=[event(1, 0), event(1, 1), event(1, 2)])
    for table in ("spans", "span_events"):
        db.execute(
            f"select public.compress_chunk(c) from public.show_chunks('observability.{table}') as c"
        )
    # The chunk holding the span's events (other tests may have left empty chunks behind).
    compressed = read(
        db,
        "select is_compressed from timescaledb_information.chunks"
        " where hypertable_name = 'span_events' and range_start <= %s and range_end > %s",
        [START + timedelta(seconds=1)] * 2,
    )
    assert compressed == [{"is_compressed": True}]
    result = write_batch(db, spans=[span(1)], span_events=[event(1, 1, "changed")])
    assert result.rejected == [] and result.written["span_event"] == 1
    assert [(r["event_index"], r["name"]) for r in read(db, EVENTS)] == [(1, "changed")]
