from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from tests.oracle.model import BULK, INT4_MAX, JSON, PATHS, SDK, OtlpEvent, OtlpSpan
from tests.oracle.spans import (
    CHUNK_EVENTS,
    EMBEDDING_MODELS,
    KNOWN_MODELS,
    MS,
    SECOND,
    UNKNOWN_MODELS,
    Usage,
    child_span,
    chunk_events,
    exception_event,
    llm_attributes,
    moved,
    root_span,
)
from tests.oracle.traffic import HOUR, Generator, Plan

# The trace shapes. Each function adds one trace (a Plan) and its deliveries; GUARANTEED lists
# the shapes every run contains, whatever the seed and size, and the rest of the traffic is
# filled with typical traces (some of them late).

OTLP = (SDK, JSON)
LONG_NS = (2**31 + 3_600_000) * MS  # over 24.8 days: duration_ms does not fit int4
ROOT_OPERATIONS = ("invoke_agent", "invoke_agent", "chat", "search", None)


def _llm(
    g: Generator,
    trace_id: str,
    parent: str,
    start: int,
    *,
    kind: str = "known",
    usage: str = "both",
    stream: bool | None = None,
    duration_ns: int | None = None,
    error: str | None = None,
) -> OtlpSpan:
    rng = g.rng
    if kind == "known":
        model, providers = rng.choice(KNOWN_MODELS)
        provider: str | None = rng.choice(providers) if rng.random() < 0.9 else None
    elif kind == "unknown":
        model, provider = rng.choice(UNKNOWN_MODELS)
    else:  # no model at all: an LLM call an instrumentation could not name
        model, provider = None, rng.choice(("openai", None))
    tokens = {
        "both": Usage(rng.randrange(20, 8000), rng.randrange(1, 1500)),
        "input": Usage(rng.randrange(20, 8000), None),
        "output": Usage(None, rng.randrange(1, 1500)),
        "none": Usage(None, None),
        "huge": Usage(rng.randrange(2_000_000_000, INT4_MAX + 1), rng.randrange(0, 1000)),
    }[usage]
    stream = rng.random() < 0.4 if stream is None else stream
    duration = duration_ns or rng.randrange(150, 15_000) * MS + rng.randrange(1000)
    end = start + duration
    ttft = min(rng.randrange(80, 3000), duration // MS - 10) if stream else None
    events: tuple[OtlpEvent, ...] = ()
    if ttft is not None and rng.random() < 0.4:
        # time to first token only from the chunk events (as OpenLLMetry records streams)
        name = rng.choice(CHUNK_EVENTS)
        events = chunk_events(start, ttft, end, rng.randrange(1, 5), name)
        attributes = llm_attributes(rng, model, provider, tokens, None)
        attributes["gen_ai.request.stream"] = True
    else:
        attributes = llm_attributes(rng, model, provider, tokens, ttft)
        if ttft is not None:  # chunk events too, a little later: the attribute wins
            events = chunk_events(start, ttft + 7, end, rng.randrange(1, 5))
    status, message = "unset", None
    if error == "status":
        status, message = "error", rng.choice(("rate limited", "context length exceeded"))
        attributes["error.type"] = rng.choice(("429", "invalid_request_error"))
    elif error == "exception":
        status = "error"
        events += (exception_event(start + duration // 2, "openai.APITimeoutError", "timed out"),)
    name = f"{attributes['gen_ai.operation.name']} {model or 'unknown'}"
    return child_span(
        trace_id,
        g.ids.span(),
        parent,
        name,
        start,
        end,
        attributes,
        status=status,
        message=message,
        events=events,
    )


def _tool(g: Generator, trace_id: str, parent: str, start: int, kind: str) -> OtlpSpan:
    rng = g.rng
    duration = rng.randrange(5, 900) * MS + rng.randrange(1000)
    attributes: dict[str, Any] = {"gen_ai.operation.name": kind}
    if kind == "embeddings":
        model, provider = rng.choice(EMBEDDING_MODELS)
        attributes.update({"gen_ai.request.model": model, "gen_ai.provider.name": provider})
        attributes["gen_ai.usage.input_tokens"] = rng.randrange(5, 600)
    elif kind in ("retrieval", "rerank"):
        attributes["gen_ai.data_source.id"] = str(rng.choice(g.kbs))
    return child_span(
        trace_id, g.ids.span(), parent, f"{kind} step", start, start + duration, attributes
    )


def _root(
    g: Generator,
    trace_id: str,
    start: int,
    duration: int | None,
    *,
    operation: str | None = "invoke_agent",
    who: dict[str, Any] | None = None,
    error: str | None = None,
    llm: bool = False,
) -> OtlpSpan:
    rng = g.rng
    who = g.who() if who is None else who
    extra: dict[str, Any] = {}
    if llm:  # the root is itself the LLM call
        model, providers = rng.choice(KNOWN_MODELS)
        usage = Usage(rng.randrange(20, 4000), rng.randrange(1, 800))
        extra = llm_attributes(rng, model, providers[0], usage, None, operation)
    status, message, events = "unset", None, ()
    if error == "status":
        status, message = "error", "the answer could not be generated"
        extra["error.type"] = "upstream_error"
    elif error == "exception":
        status = "error"
        events = (exception_event(start + 1000, "TimeoutError", "retrieval timed out"),)
    elif rng.random() < 0.3:
        status = "ok"
    # roots start and end on whole microseconds: started_at keeps microseconds, and a trace's
    # duration is then the same whether taken from nanoseconds or microseconds
    end = None if duration is None else start + duration // 1000 * 1000
    names = {"invoke_agent": "answer question", "search": "search kb", "chat": "chat turn"}
    return root_span(
        trace_id,
        g.ids.span(),
        names.get(operation or "", "handle request"),
        start,
        end,
        operation=operation,
        extra=extra,
        status=status,
        message=message,
        events=events,
        **who,
    )


def _children(
    g: Generator, root: OtlpSpan, *, llm: dict[str, Any] | None = None, retrieval_only: bool = False
) -> list[OtlpSpan]:
    rng = g.rng
    tid, at = root.trace_id, root.start_ns + rng.randrange(1, 40) * MS + rng.randrange(1000)
    spans = []
    kinds = ["retrieval"] if rng.random() < 0.85 else []
    if not retrieval_only and rng.random() < 0.7:
        kinds.insert(0, "embeddings")
    if rng.random() < 0.3:
        kinds.append("rerank")
    for kind in kinds:
        spans.append(_tool(g, tid, root.span_id, at, kind))
        at = spans[-1].end_ns or at
    if not retrieval_only:
        for _ in range(1 if llm is not None else rng.choice((1, 1, 2))):
            spans.append(_llm(g, tid, root.span_id, at, **(llm or {})))
            at = (spans[-1].end_ns or at) + rng.randrange(1, 30) * MS
        if rng.random() < 0.2:
            spans.append(_tool(g, tid, root.span_id, at, "execute_tool"))
    return spans


def _trace(
    g: Generator, plan: Plan, start: int, *, root: dict[str, Any] | None = None, **children: Any
) -> tuple[OtlpSpan, list[OtlpSpan]]:
    rng = g.rng
    options = dict(root or {})
    operation = options.pop("operation", rng.choice(ROOT_OPERATIONS))
    duration = options.pop("duration", rng.randrange(300, 25_000) * MS)
    root_span = _root(
        g, plan.trace_id, start, duration, operation=operation, llm=operation == "chat", **options
    )
    retrieval_only = children.pop("retrieval_only", operation == "search")
    return root_span, _children(g, root_span, retrieval_only=retrieval_only, **children)


def _send(g: Generator, plan: Plan, phase: int, root: OtlpSpan, kids: list[OtlpSpan]) -> None:
    """Delivered the way a batching exporter does: all at once, or children first."""
    if kids and g.rng.random() < 0.35:
        g.deliver(plan, phase, kids)
        g.deliver(plan, phase, [root])
    else:
        g.deliver(plan, phase, kids + [root])


# --- the shapes ---------------------------------------------------------------------------------


def typical(g: Generator, shape: str = "typical", phase: int = 0, start: int | None = None) -> Plan:
    plan = g.plan(shape)
    root, kids = _trace(g, plan, g.start() if start is None else start)
    _send(g, plan, phase, root, kids)
    return plan


def with_llm(shape: str, paths: tuple[str, ...] = (SDK, JSON, BULK), **llm: Any) -> Callable:
    def build(g: Generator) -> None:
        plan = g.plan(shape, paths)
        root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"}, llm=llm)
        _send(g, plan, 0, root, kids)

    return build


def retrieval_only(g: Generator) -> None:
    plan = g.plan("retrieval_only")
    root, kids = _trace(g, plan, g.start(), root={"operation": "search"}, retrieval_only=True)
    _send(g, plan, 0, root, kids)


def single_llm_root(g: Generator) -> None:
    plan = g.plan("single_llm_root")
    root = _root(g, plan.trace_id, g.start(), 900 * MS, operation="chat", llm=True)
    g.deliver(plan, 0, [root])


def no_dimensions(g: Generator) -> None:
    plan = g.plan("no_user_kb_session")
    who = {"user": None, "session": None, "kb": None}
    root, kids = _trace(g, plan, g.start(), root={"who": who, "operation": None})
    _send(g, plan, 0, root, kids)


def multi_root(g: Generator) -> None:
    """Several roots in one trace (an instrumentation that lost the context), distinct starts;
    sometimes a root with an earlier start arrives late and takes over the trace's fields."""
    rng = g.rng
    plan = g.plan("multi_root", OTLP)
    gap = rng.choice((rng.randrange(1, 90) * SECOND, rng.randrange(1, 5) * 3600 * SECOND))
    start = min(g.start(), g.ns(g.hi - 2 * HOUR) - gap)  # the second root not in the future
    first, kids = _trace(g, plan, start, root={"operation": "invoke_agent"})
    error = "status" if rng.random() < 0.5 else None
    second, more = _trace(g, plan, start + gap, root={"operation": "search", "error": error})
    g.deliver(plan, 0, kids + more + [second, first])
    if rng.random() < 0.6:
        early = start - rng.randrange(1, 7200) * SECOND
        third, _ = _trace(g, plan, early, root={"operation": None, "duration": 2 * SECOND})
        g.deliver(plan, 1, [third])


def earliest_root_moves(g: Generator) -> None:
    """Two roots; then the earliest is re-sent starting after the other, which now names the
    trace."""
    plan = g.plan("earliest_root_restarts_later", OTLP)
    start = g.start()
    first, kids = _trace(g, plan, start, root={"operation": "invoke_agent"})
    second, more = _trace(g, plan, start + 60 * SECOND, root={"operation": "search"})
    g.deliver(plan, 0, kids + more + [first, second])
    later = start + 120 * SECOND
    g.deliver(plan, g.rng.choice((0, 1)), [moved(first, start_ns=later, end_ns=later + SECOND)])


def children_first(g: Generator) -> None:
    plan = g.plan("children_before_root")
    root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"})
    g.deliver(plan, 0, kids)
    g.deliver(plan, 0, [root])


def root_late(g: Generator) -> None:
    """Children synced in phase 1 with no root (no trace row); the root only in phase 2."""
    plan = g.plan("root_in_phase_2")
    root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"})
    g.deliver(plan, 0, kids)
    g.deliver(plan, 1, [root])


def retried(g: Generator) -> None:
    plan = g.plan("export_retried")
    root, kids = _trace(g, plan, g.start())
    g.deliver(plan, 0, kids + [root])
    g.deliver(plan, 0, kids + [root])


def concurrent_copies(g: Generator) -> None:
    plan = g.plan("export_sent_concurrently")
    root, kids = _trace(g, plan, g.start())
    g.deliver(plan, 0, kids + [root], copies=3)


def split_concurrent(g: Generator) -> None:
    """The root and the children, split over up to three exports, all sent at the same time
    (several exporters, or ingest processes, writing one trace at once)."""
    plan = g.plan("children_and_root_concurrently")
    root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"})
    groups = [kids[i::3] for i in range(3) if kids[i::3]]
    g.deliver(plan, 0, *groups, [root])


def twice_in_one_export(g: Generator) -> None:
    """Two versions of a span in one export, the running one first: the last copy wins."""
    plan = g.plan("two_versions_in_one_export")
    root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"})
    running = moved(kids[-1], end_ns=None)
    g.deliver(plan, 0, [running, *kids, root])


def end_updated(g: Generator) -> None:
    """Root and an LLM span first exported running (no end), later again with their end."""
    rng = g.rng
    plan = g.plan("span_end_updated")
    root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"})
    running = [moved(s, end_ns=None, status="unset") for s in [root, kids[-1]]]
    g.deliver(plan, 0, kids[:-1] + running)
    g.deliver(plan, rng.choice((0, 1)), [kids[-1], root])


def child_restart(g: Generator) -> None:
    """A non-root span re-sent with another start (and end): the new version replaces it."""
    rng = g.rng
    plan = g.plan("child_start_changed")
    root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"})
    g.deliver(plan, 0, kids + [root])
    shift = rng.choice((-1, 1)) * rng.randrange(1, 7200) * SECOND + rng.randrange(1000)
    llm = kids[-1]
    if llm.start_ns + shift > g.ns(g.hi - HOUR):  # not into the future
        shift = -abs(shift)
    end = None if llm.end_ns is None else llm.end_ns + shift + rng.randrange(0, 5) * SECOND
    g.deliver(plan, rng.choice((0, 1)), [moved(llm, start_ns=llm.start_ns + shift, end_ns=end)])


def root_restart(g: Generator) -> None:
    """A trace's only root re-sent with another start: the trace moves (maybe to another day)."""
    rng = g.rng
    plan = g.plan("root_start_changed")
    root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"})
    g.deliver(plan, 0, kids + [root])
    shift = rng.choice((-1, 1)) * rng.choice((rng.randrange(1, 3600), rng.randrange(3600, 86400)))
    start = root.start_ns + shift * SECOND
    if start > g.ns(g.now - timedelta(hours=2)) or start < g.ns(g.lo):
        start = root.start_ns - abs(shift) * SECOND
    g.deliver(
        plan, rng.choice((0, 1)), [moved(root, start_ns=start, end_ns=start + 3 * SECOND + 7000)]
    )


def errors(kind: str) -> Callable[[Generator], None]:
    def build(g: Generator) -> None:
        plan = g.plan(f"error_via_{kind}")
        root, kids = _trace(
            g,
            plan,
            g.start(),
            root={"operation": "invoke_agent", "error": kind},
            llm={"error": kind},
        )
        _send(g, plan, 0, root, kids)

    return build


def long_spans(g: Generator) -> None:
    """A root and an LLM call of more than 24.8 days: duration_ms NULL for both."""
    rng = g.rng
    plan = g.plan("longer_than_24_8_days")
    start = g.uniform(g.lo, g.lo + timedelta(hours=12))
    root = _root(g, plan.trace_id, start, LONG_NS + rng.randrange(3600) * SECOND)
    llm = _llm(g, plan.trace_id, root.span_id, start + 5 * MS, duration_ns=LONG_NS)
    short = _llm(g, plan.trace_id, root.span_id, start + 9 * MS)
    g.deliver(plan, 0, [llm, short, root])


def edges(style: str) -> Callable[[Generator], None]:
    """A root and LLM calls exactly on a bucket edge: hh:00:00.000000, hh:59:59.999999, the
    day's and Monday's 00:00 UTC and the microsecond before; for the last microsecond of a
    bucket, a child 999 ns later (same microsecond) and one 1 µs later (next bucket)."""

    def build(g: Generator) -> None:
        plan = g.plan(f"edge_{style}")
        start = g.start(style)
        root = _root(g, plan.trace_id, start, 4 * SECOND)
        kids = [_llm(g, plan.trace_id, root.span_id, start + offset) for offset in (0, 999, 1000)]
        kids.append(_llm(g, plan.trace_id, root.span_id, start - 1))
        g.deliver(plan, 0, kids + [root])

    return build


def big_tokens(g: Generator, path: str) -> None:
    """LLM calls with counts near the int4 maximum: the trace's sum does not fit int4."""
    plan = g.plan("tokens_overflow_int4", (path,))
    root = _root(g, plan.trace_id, g.start(), 60 * SECOND)
    kids = [
        _llm(g, plan.trace_id, root.span_id, root.start_ns + i * MS, usage="huge")
        for i in range(1, 3)
    ]
    _send(g, plan, 0, root, kids)


def big_cost(g: Generator, path: str) -> None:
    """Two priced calls of about 9,000 USD each: each fits numeric(10, 6), their sum does not;
    and one call whose own cost is over 10,000 USD (NULL)."""
    rng = g.rng
    plan = g.plan("cost_overflow", (path,))
    root = _root(g, plan.trace_id, g.start(), 120 * SECOND)
    kids = []
    for i, (model, provider, output) in enumerate(
        (
            ("claude-3-5-sonnet", "anthropic", rng.randrange(600_000_000, 660_000_000)),
            ("claude-3-5-sonnet", "anthropic", rng.randrange(600_000_000, 660_000_000)),
            ("gpt-4o", "openai", rng.randrange(1_100_000_000, 2_000_000_000)),
        )
    ):
        attributes = llm_attributes(rng, model, provider, Usage(1000, output), None, "chat")
        start = root.start_ns + (i + 1) * SECOND
        kids.append(
            child_span(
                plan.trace_id,
                g.ids.span(),
                root.span_id,
                f"chat {model}",
                start,
                start + 30 * SECOND,
                attributes,
            )
        )
    _send(g, plan, 0, root, kids)


def future(g: Generator) -> None:
    plan = g.plan("future_within_an_hour")
    root, kids = _trace(g, plan, g.start("future"), root={"duration": 2 * SECOND})
    _send(g, plan, 0, root, kids)


def refused(style: str, path: str) -> Callable[[Generator], None]:
    def build(g: Generator) -> None:
        plan = g.plan(f"refused_{style}", (path,))
        root, kids = _trace(g, plan, g.start(f"refused_{style}"), root={"duration": 3 * SECOND})
        g.deliver(plan, g.rng.choice((0, 1)), kids + [root])

    return build


def bulk_cost_sent(g: Generator) -> None:
    """The application sends its own cost for a known and for an unknown model."""
    plan = g.plan("bulk_cost_sent", (BULK,))
    root = _root(g, plan.trace_id, g.start(), 10 * SECOND)
    kids = [
        _llm(g, plan.trace_id, root.span_id, root.start_ns + MS, kind=kind)
        for kind in ("known", "unknown")
    ]
    costs = {s.span_id: Decimal(g.rng.randrange(1, 900_000)) / 1_000_000 for s in kids}
    g.deliver(plan, 0, kids + [root], bulk_cost=costs)


def bulk_trace_restart(g: Generator) -> None:
    """The application re-sends its trace row with another started_at."""
    rng = g.rng
    plan = g.plan("bulk_trace_start_changed", (BULK,))
    root, kids = _trace(g, plan, g.start(), root={"operation": "invoke_agent"})
    g.deliver(plan, 0, kids + [root])
    start = root.start_ns - rng.randrange(60, 20_000) * SECOND
    g.deliver(plan, rng.choice((0, 1)), [moved(root, start_ns=start, end_ns=root.end_ns)])


def running(g: Generator) -> None:
    plan = g.plan("root_never_ends")
    root, kids = _trace(g, plan, g.start(), root={"duration": None})
    _send(g, plan, 0, root, kids)


def late(kind: str) -> Callable[[Generator], None]:
    def build(g: Generator) -> None:
        typical(g, f"late_into_synced_{kind}", phase=1, start=g.late_start(kind))

    return build


def late_child(g: Generator) -> None:
    """A synced trace gets another LLM call in phase 2: its totals change."""
    plan = typical(g, "late_child_span")
    root = next(s for s in plan.latest.values() if s.parent_id is None)
    llm = _llm(g, plan.trace_id, root.span_id, root.start_ns + 3 * MS)
    g.deliver(plan, 1, [llm])


def dst(g: Generator) -> None:
    """Traces on both sides of a DST change, when one falls inside the retention window."""
    if g.dst is None:
        return
    _, change = g.dst
    for minutes in (-150, -61, -30, -1, 0, 1, 30, 61, 150, 24 * 60 + 5):
        plan = g.plan("around_a_dst_change")
        start = g.ns(change + timedelta(minutes=minutes))
        root, kids = _trace(g, plan, start, root={"duration": 5 * SECOND})
        _send(g, plan, 0, root, kids)


GUARANTEED: tuple[tuple[Callable[[Generator], None], int], ...] = (
    (retrieval_only, 3),
    (with_llm("unknown_model", kind="unknown"), 3),
    (with_llm("llm_usage_missing", usage="none", stream=False), 2),
    (with_llm("llm_without_model", kind="none"), 1),
    (with_llm("stream_with_usage", stream=True), 2),
    (with_llm("stream_without_usage", usage="none", stream=True), 2),
    (with_llm("input_tokens_only", usage="input"), 1),
    (with_llm("output_tokens_only", usage="output"), 1),
    (single_llm_root, 2),
    (no_dimensions, 2),
    (multi_root, 3),
    (earliest_root_moves, 1),
    (children_first, 2),
    (root_late, 2),
    (retried, 2),
    (concurrent_copies, 2),
    (split_concurrent, 2),
    (twice_in_one_export, 1),
    (end_updated, 3),
    (child_restart, 3),
    (root_restart, 3),
    (errors("status"), 2),
    (errors("exception"), 2),
    (long_spans, 1),
    (edges("hour_start"), 1),
    (edges("hour_end"), 1),
    (edges("day_start"), 1),
    (edges("day_end"), 1),
    (edges("week_start"), 1),
    (edges("week_end"), 1),
    *((partial(shape, path=path), 1) for shape in (big_tokens, big_cost) for path in PATHS),
    (future, 2),
    *((refused(style, path), 1) for style in ("future", "past") for path in PATHS),
    (bulk_cost_sent, 1),
    (bulk_trace_restart, 2),
    (running, 2),
    (late("hour"), 2),
    (late("day"), 2),
    (late("week"), 2),
    (late_child, 2),
    (dst, 1),
)


def documents(g: Generator) -> None:
    """Document processing events: every step, errors, events without a duration, edges,
    late events, and exports retried or sent twice at once."""
    rng = g.rng
    types = ("upload", "parse", "chunk", "embed", "index", "delete")
    styles = ["hour_start", "hour_end", "week_start", "week_end", "day_end", "future"]
    styles += ["refused_future", "refused_past"]
    made = 0
    while made < g.target_documents:
        phase = 1 if not styles and rng.random() < 0.2 else 0
        events = []
        for _ in range(rng.randrange(1, 7)):
            style = styles.pop() if styles else "mixed"
            at = g.late_start("hour") if phase == 1 else g.start(style)
            status = rng.choices(("ok", "error", "running"), (85, 10, 5))[0]
            event: dict[str, Any] = {
                "id": str(g.ids.uuid()),
                "created_at": _datetime(at),
                "document_id": str(g.ids.uuid()),
                "kb_id": str(rng.choice(g.kbs)) if rng.random() < 0.9 else None,
                "event_type": rng.choice(types),
                "status": status,
                "duration_ms": None
                if status == "running" or rng.random() < 0.1
                else rng.randrange(0, 120_000),
                "chunks_count": rng.randrange(0, 400),
                "token_count": rng.randrange(0, 200_000),
                "file_size_bytes": rng.randrange(100, 50_000_000_000),
                "error_message": "parser failed" if status == "error" else None,
            }
            events.append(event)
        made += len(events)
        copies = 2 if rng.random() < 0.15 else 1
        g.documents(phase, events, copies)
        if rng.random() < 0.1:
            g.documents(phase, events)  # retried later


def _datetime(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def build(g: Generator) -> None:
    for shape, times in GUARANTEED:
        for _ in range(times):
            shape(g)
    while len(g.plans) < g.target_traces:
        if g.rng.random() < 0.15:
            late(g.rng.choice(("hour", "day", "week")))(g)
        else:
            typical(g)
    documents(g)
