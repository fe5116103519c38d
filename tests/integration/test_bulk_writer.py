from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.oracle.expected import PROVIDER_ALIASES, canonical_provider
from worker.ingest import COST_SOURCE_KEY, Reject, write_batch
from worker.ingest import writer as writer_module
from worker.ingest.items import SPAN, TRACE

# Recent, so that no compression or retention policy touches the rows during a test.
START = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def db(clean_observability: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(clean_observability, autocommit=True) as connection:
        yield connection


def span(n: int, **changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": f"{n:016x}",
        "started_at": START + timedelta(seconds=n),
        "ended_at": START + timedelta(seconds=n, milliseconds=800),
        "name": "chat gpt-4o",
        "span_type": "llm",
        "status": "ok",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 100,
        "attributes": {"gen_ai.operation.name": "chat"},
    }
    item.update(changes)
    return item


def trace(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "started_at": START,
        "name": "chat turn",
        "operation_type": "chat",
        "status": "ok",
    }
    item.update(changes)
    return item


def count(db: psycopg.Connection, table: str) -> int:
    row = db.execute(sql.SQL("select count(*) from observability.{}").format(sql.Identifier(table)))
    found = row.fetchone()
    assert found is not None
    return int(found[0])


def span_row(db: psycopg.Connection, span_id: str) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("select * from observability.spans where span_id = %s", [span_id])
        found = row.fetchone()
    assert found is not None
    return found


def test_a_batch_of_every_kind_is_written(db: psycopg.Connection) -> None:
    document = uuid.uuid4()
    result = write_batch(
        db,
        traces=[trace()],
        spans=[span(1), span(2)],
        chat_messages=[{"session_id": "s1", "role": "user", "content": "hello", "sources": []}],
        document_events=[{"document_id": str(document), "event_type": "parse", "status": "ok"}],
    )
    assert result.rejected == []
    assert result.written == {"trace": 1, "span": 2, "chat_message": 1, "document_event": 1}
    assert [count(db, t) for t in ("traces", "spans", "chat_messages", "document_events")] == [
        1,
        2,
        1,
        1,
    ]
    assert span_row(db, f"{1:016x}")["duration_ms"] == 800


def test_spans_without_a_cost_are_priced_and_marked(db: psycopg.Connection) -> None:
    result = write_batch(
        db,
        spans=[
            span(1),  # gpt-4o: 1000 * 2.50 / 1M + 100 * 10.00 / 1M
            span(2, cost_usd=Decimal("0.5")),  # the application's own cost
            span(3, model="llama-3-70b", provider="meta"),  # no price
            span(4, input_tokens=None, output_tokens=None),  # no tokens
            span(5, provider=None),  # any provider's price
            span(6, provider="azure"),  # the provider must match
        ],
    )
    assert result.written["span"] == 6
    costs = {
        n: (row["cost_usd"], row["attributes"].get(COST_SOURCE_KEY))
        for n in range(1, 7)
        for row in [span_row(db, f"{n:016x}")]
    }
    assert costs == {
        1: (Decimal("0.003500"), "model_prices"),
        2: (Decimal("0.500000"), None),
        3: (None, None),
        4: (None, None),
        5: (Decimal("0.003500"), "model_prices"),
        6: (None, None),
    }


def test_the_same_batch_twice_leaves_no_duplicates(db: psycopg.Connection) -> None:
    batch = {"traces": [trace()], "spans": [span(n) for n in range(1, 51)]}
    first = write_batch(db, **batch)
    second = write_batch(db, **batch)
    assert first.written["span"] == 50
    assert second.written == {"trace": 0, "span": 0, "chat_message": 0, "document_event": 0}
    assert (count(db, "traces"), count(db, "spans")) == (1, 50)


def test_a_later_version_updates_the_row(db: psycopg.Connection) -> None:
    write_batch(db, traces=[trace(status="running")], spans=[span(1, status="running")])
    result = write_batch(
        db,
        traces=[trace(status="error", error_message="timeout")],
        spans=[span(1, status="error", output_tokens=0, attributes={"retry": 2})],
    )
    assert result.written["trace"] == 1 and result.written["span"] == 1
    row = span_row(db, f"{1:016x}")
    assert (row["status"], row["output_tokens"], row["cost_usd"]) == ("error", 0, Decimal("0.0025"))
    assert row["attributes"] == {"retry": 2, COST_SOURCE_KEY: "model_prices"}
    found = db.execute("select status, error_message from observability.traces").fetchall()
    assert found == [("error", "timeout")]


def test_within_one_batch_the_last_delivery_wins(db: psycopg.Connection) -> None:
    result = write_batch(db, spans=[span(1, status="running"), span(2), span(1, status="ok")])
    assert result.written["span"] == 2
    assert span_row(db, f"{1:016x}")["status"] == "ok"


def test_messages_and_events_are_idempotent_by_id_and_time(db: psycopg.Connection) -> None:
    message_id, event_id, document = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    message = {"id": message_id, "created_at": START, "session_id": "s", "role": "assistant"}
    event = {"id": event_id, "created_at": START, "document_id": document, "event_type": "embed"}
    write_batch(
        db,
        chat_messages=[{**message, "content": "partial"}],
        document_events=[{**event, "status": "running"}],
    )
    result = write_batch(
        db,
        chat_messages=[{**message, "content": "complete answer"}],
        document_events=[{**event, "status": "ok", "chunks_count": 12}],
    )
    assert result.written["chat_message"] == 1 and result.written["document_event"] == 1
    assert db.execute("select id, content from observability.chat_messages").fetchall() == [
        (message_id, "complete answer")
    ]
    assert db.execute(
        "select status, chunks_count from observability.document_events"
    ).fetchall() == [("ok", 12)]


def test_bad_items_are_rejected_one_by_one_and_no_valid_sibling_is_lost(
    db: psycopg.Connection,
) -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"child": deep}
    bad = [
        span(101, span_id="not-hex-at-all!"),
        span(102, trace_id="0" * 32),
        span(103, ended_at=START - timedelta(hours=1)),
        span(104, duration_ms=-20),
        span(105, name="nul\x00byte"),
        span(106, name="broken \udcff text"),
        span(107, model=b"\xff\xfegpt".decode("latin-1").encode("utf-16")),
        span(108, attributes={"blob": "x" * 1_000_000}),
        span(109, attributes=deep),
        span(110, attributes={"k": "nul\x00inside"}),
        span(111, span_type="banana"),
    ]
    good = [span(n) for n in range(1, 6)]
    items = [good[0], *bad[:5], good[1], good[2], *bad[5:], good[3], good[4]]
    result = write_batch(db, spans=items, traces=[trace(), trace(trace_id="short")])
    assert result.written["span"] == 5 and result.written["trace"] == 1
    assert [r.index for r in result.rejected if r.kind == "span"] == [
        1,
        2,
        3,
        4,
        5,
        8,
        9,
        10,
        11,
        12,
        13,
    ]
    reasons = [r.reason for r in result.rejected if r.kind == "span"]
    for reason, expected in zip(
        reasons,
        [
            "span_id must be 16 lowercase hex digits",
            "trace_id must not be all zeros",
            "is before started_at",
            "duration_ms must not be negative",
            "name contains a NUL character",
            "name is not valid UTF-8",
            "model must be text (str), got bytes",
            "attributes is 1,000,011 bytes as JSON, more than 65,536",
            "attributes is nested deeper than 16 levels",
            "attributes contains a NUL character",
            "span_type must be one of",
        ],
        strict=True,
    ):
        assert expected in reason
    assert Reject("trace", 1, "trace_id must be 32 lowercase hex digits, got 'short'") in (
        result.rejected
    )
    stored = {row[0] for row in db.execute("select span_id from observability.spans")}
    assert stored == {f"{n:016x}" for n in range(1, 6)}


def test_text_too_long_for_its_index_is_rejected_per_item(db: psycopg.Connection) -> None:
    # PostgreSQL refuses btree entries over about 2,700 bytes; such a value used to fail the
    # whole batch with ProgramLimitExceeded.
    long = "x" * 3000
    result = write_batch(
        db,
        traces=[trace(session_id=long), trace(trace_id="1" * 32, session_id="s-1")],
        spans=[span(1, model=long), span(2, provider=long), span(3)],
        chat_messages=[
            {"session_id": long, "role": "user", "content": "hi"},
            {"session_id": "s-1", "role": "user", "content": "hi"},
        ],
    )
    assert result.written == {"trace": 1, "span": 1, "chat_message": 1, "document_event": 0}
    assert sorted((r.kind, r.index) for r in result.rejected) == [
        ("chat_message", 0),
        ("span", 0),
        ("span", 1),
        ("trace", 0),
    ]
    assert all("3,000 bytes as UTF-8, more than 1,000" in r.reason for r in result.rejected)
    assert [r[0] for r in db.execute("select span_id from observability.spans")] == [f"{3:016x}"]


def test_a_cost_that_rounds_to_the_limit_is_rejected_per_item(db: psycopg.Connection) -> None:
    result = write_batch(db, spans=[span(1, cost_usd="9999.9999995"), span(2, cost_usd="1")])
    assert [(r.index, "must be below 10000 USD" in r.reason) for r in result.rejected] == [
        (0, True)
    ]
    assert result.written["span"] == 1
    assert span_row(db, f"{2:016x}")["cost_usd"] == Decimal(1)


def test_a_batch_with_only_rejects_touches_nothing(db: psycopg.Connection) -> None:
    result = write_batch(db, spans=[span(1, span_id="bad")])
    assert result.written["span"] == 0 and len(result.rejected) == 1
    assert count(db, "spans") == 0


def test_a_database_error_writes_nothing_of_the_batch(
    db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No item that passes validation breaks a constraint, so the fault is forced: the span
    # upsert fails after the spans of the same batch were written (spans go first).
    real = writer_module.upsert_statements

    def failing(kind: Any) -> Any:
        statements = real(kind)
        if kind is TRACE:
            broken = sql.SQL("select 1 / 0 from pg_temp.{}").format(statements.stage)
            return dataclasses.replace(statements, upsert=broken)
        return statements

    monkeypatch.setattr(writer_module, "upsert_statements", failing)
    with pytest.raises(psycopg.errors.DivisionByZero):
        write_batch(db, traces=[trace()], spans=[span(1)])
    assert (count(db, "traces"), count(db, "spans")) == (0, 0)
    monkeypatch.undo()
    assert write_batch(db, traces=[trace()], spans=[span(1)]).written["span"] == 1


def test_inside_the_callers_transaction(clean_observability: str) -> None:
    with psycopg.connect(clean_observability) as tx:  # not autocommit
        tx.execute("select 1")  # a transaction is open
        first = write_batch(tx, spans=[span(1), span(2)])
        second = write_batch(tx, spans=[span(3)])
        assert (first.written["span"], second.written["span"]) == (2, 1)
        tx.rollback()
        assert count(tx, "spans") == 0
        write_batch(tx, spans=[span(4)])
        tx.commit()
    with psycopg.connect(clean_observability, autocommit=True) as check:
        assert [r[0] for r in check.execute("select span_id from observability.spans")] == [
            f"{4:016x}"
        ]


def test_a_dropped_staging_table_is_made_again(db: psycopg.Connection) -> None:
    write_batch(db, spans=[span(1)])
    db.execute(sql.SQL("drop table pg_temp.{}").format(writer_module.upsert_statements(SPAN).stage))
    assert write_batch(db, spans=[span(2)]).written["span"] == 1
    assert count(db, "spans") == 2


def test_a_redelivery_updates_a_row_in_a_compressed_chunk(db: psycopg.Connection) -> None:
    write_batch(db, spans=[span(1, status="running"), span(2)])
    db.execute(
        "select public.compress_chunk(c, if_not_compressed => true)"
        " from public.show_chunks('observability.spans') as c"
    )
    result = write_batch(db, spans=[span(1, status="ok"), span(2), span(3)])
    assert result.written["span"] == 2
    assert span_row(db, f"{1:016x}")["status"] == "ok"
    assert count(db, "spans") == 3


def test_the_writer_and_llm_cost_usd_price_alike(db: psycopg.Connection) -> None:
    models = [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-haiku"), (None, "gpt-4.1")]
    spans = [
        span(n, provider=provider, model=model, input_tokens=n * 37, output_tokens=n * 11)
        for n, (provider, model) in enumerate(models * 10, start=1)
    ]
    # Half a micro-dollar (2 tokens at 0.25 USD per million) rounds away from zero, as
    # PostgreSQL's round() does; a span with output tokens only counts its input as 0.
    spans.append(span(41, provider="anthropic", model="claude-3-haiku", input_tokens=2))
    spans[-1]["output_tokens"] = 0
    spans.append(span(42, input_tokens=None, output_tokens=7))
    assert write_batch(db, spans=spans).written["span"] == 32
    half = db.execute(
        "select cost_usd from observability.spans where span_id = %s", [f"{41:016x}"]
    ).fetchone()
    assert half == (Decimal("0.000001"),)
    rows = db.execute(
        "select cost_usd, observability.llm_cost_usd(model, input_tokens, output_tokens,"
        " started_at, provider) from observability.spans"
    ).fetchall()
    assert len(rows) == 32
    assert all(stored == computed and stored is not None for stored, computed in rows)
    one = db.execute(
        "select observability.llm_cost_usd('gpt-4o', 1000, 200, now(), 'openai')"
    ).fetchone()
    assert one == (Decimal("0.004500"),)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("OpenAI", "gpt-4o"),
        ("Anthropic", "claude-3-5-haiku"),
        ("gcp.gemini", "gemini-1.5-pro"),
        ("gcp.vertex_ai", "gemini-1.5-flash"),
        ("azure.ai.openai", "gpt-4o"),
        ("az.ai.openai", "gpt-4o-mini"),
    ],
)
def test_provider_names_and_aliases_find_their_price(
    db: psycopg.Connection, provider: str, model: str
) -> None:
    write_batch(db, spans=[span(1, provider=provider, model=model)])
    stored, computed = db.execute(
        "select cost_usd, observability.llm_cost_usd(model, input_tokens, output_tokens,"
        " started_at, provider) from observability.spans"
    ).fetchone() or (None, None)
    assert stored is not None and stored > 0
    assert stored == computed
    assert span_row(db, f"{1:016x}")["provider"] == provider, "the name is stored as sent"


def test_the_writer_prices_every_provider_alias_as_the_database_does(
    db: psycopg.Connection,
) -> None:
    # The oracle's own alias table (written from the conventions, not from the code) names the
    # providers; the writer asks observability.canonical_provider, the only table in the code.
    names = sorted({*PROVIDER_ALIASES, "OpenAI", "AZURE.AI.OPENAI", "Some-Other"})
    spans = [span(i + 1, provider=name, model="gpt-4o") for i, name in enumerate(names)]
    write_batch(db, spans=spans)
    rows = db.execute(
        "select provider, cost_usd, observability.llm_cost_usd(model, input_tokens,"
        " output_tokens, started_at, provider) from observability.spans order by provider"
    ).fetchall()
    assert [name for name, _, _ in rows] == sorted(names)
    assert all(stored == computed for _, stored, computed in rows)
    priced = {name for name, stored, _ in rows if stored is not None}
    openai = {name for name in names if canonical_provider(name) == "openai"}
    assert priced == openai, "only names that stand for openai find gpt-4o's openai price"
    assert db.execute("select observability.canonical_provider(null)").fetchone() == (None,)
