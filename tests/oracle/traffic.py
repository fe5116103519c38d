from __future__ import annotations

import random
import zoneinfo
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.oracle.model import (
    BULK,
    INT4_MAX,
    JSON,
    SDK,
    BulkExport,
    Export,
    OtlpExport,
    OtlpSpan,
    Step,
    Traffic,
    datetime_to_ns,
    ns_to_datetime,
)
from tests.oracle.spans import Ids, bulk_span, bulk_trace

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# Accepted times lie in [now - ACCEPTED_DAYS, now + FUTURE_OK]; refused ones at least a day
# beyond the retention horizon (30 days, floored to a day) or 3 hours ahead. The margins keep
# every item clear of the boundaries however long the delivery takes.
ACCEPTED_DAYS = 26
FUTURE_OK = timedelta(minutes=30)
REFUSED_FUTURE = (timedelta(hours=3), timedelta(hours=6))
REFUSED_PAST = (timedelta(days=33), timedelta(days=45))
# Zones looked at first for a DST change inside the accepted window; then every other zone.
DST_ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "America/Santiago",
    "Pacific/Auckland",
    "America/Havana",
    "Africa/Casablanca",
)


@dataclass
class Plan:
    """One trace's deliveries, in order: (phase, exports sent at the same time)."""

    trace_id: str
    path: str
    shape: str
    steps: list[tuple[int, list[Export]]] = field(default_factory=list)
    latest: dict[str, OtlpSpan] = field(default_factory=dict)  # span id -> last version sent


def monday(moment: datetime) -> datetime:
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def find_dst_change(lo: datetime, hi: datetime) -> tuple[str, datetime] | None:
    """A time zone whose UTC offset changes (by whole hours on both sides) inside [lo, hi]."""
    names = list(DST_ZONES) + sorted(zoneinfo.available_timezones() - set(DST_ZONES))
    for name in names:
        try:
            zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            continue
        moment = floor_hour(lo)
        before = moment.astimezone(zone).utcoffset()
        while moment < hi:
            moment += HOUR
            offset = moment.astimezone(zone).utcoffset()
            if offset != before:
                whole = all(o is not None and o % HOUR == timedelta(0) for o in (before, offset))
                # a change at local midnight leaves a day without a midnight: not such zones
                if whole and moment.astimezone(zone).hour not in (23, 0, 1):
                    return name, moment
                break
    return None


class Generator:
    """Seeded traffic: every shape the oracle must handle, placed relative to now."""

    def __init__(self, seed: int, now: datetime, traces: int, documents: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = Ids(self.rng)
        self.now = now.astimezone(UTC)
        self.lo = floor_hour(self.now - timedelta(days=ACCEPTED_DAYS)) + HOUR
        self.hi = self.now - timedelta(minutes=15)
        self.target_traces = traces
        self.target_documents = documents
        rng = self.rng
        self.users = [self.ids.uuid() for _ in range(8)]
        self.kbs = [self.ids.uuid() for _ in range(4)]
        self.sessions = [f"session-{rng.getrandbits(40):010x}" for _ in range(12)]
        span = int((self.hi - self.lo - 2 * HOUR) / HOUR)
        self.busy = [self.lo + HOUR * rng.randrange(span) for _ in range(3)]
        first = monday(self.lo) + timedelta(weeks=1)
        self.mondays = []
        while first < self.hi - HOUR:
            self.mondays.append(first)
            first += timedelta(weeks=1)
        self.plans: list[Plan] = []
        self.document_steps: list[tuple[int, Step]] = []
        self.synced_starts: list[int] = []  # roots sent in phase 1
        self.shapes: Counter[str] = Counter()
        self.notes: list[str] = []
        self.dst = find_dst_change(self.lo + DAY, self.hi - DAY)

    # --- time ---------------------------------------------------------------------------------

    def ns(self, moment: datetime) -> int:
        return datetime_to_ns(moment)

    def uniform(self, lo: datetime, hi: datetime) -> int:
        return self.ns(lo) + self.rng.randrange((self.ns(hi) - self.ns(lo)) // 1000) * 1000

    def start(self, style: str = "mixed") -> int:
        """A root's start (whole microseconds): spread out, in a busy hour, or at an edge."""
        rng = self.rng
        if style == "mixed":
            style = "busy" if rng.random() < 0.4 else "uniform"
        if style == "uniform":
            return self.uniform(self.lo, self.hi - HOUR)
        if style == "busy":
            hour = rng.choice(self.busy)
            return self.uniform(hour, hour + timedelta(minutes=50))
        hour = self.lo + HOUR * rng.randrange(int((self.hi - self.lo) / HOUR) - 2)
        day = hour.replace(hour=0) + DAY
        if day > self.hi - HOUR:
            day -= DAY
        week = rng.choice(self.mondays)
        edges = {
            "hour_start": hour,
            "hour_end": hour + HOUR - timedelta(microseconds=1),
            "day_start": day,
            "day_end": day - timedelta(microseconds=1),
            "week_start": week,
            "week_end": week - timedelta(microseconds=1),
            "future": self.now + _between(rng, (timedelta(minutes=2), FUTURE_OK)),
            "refused_future": self.now + _between(rng, REFUSED_FUTURE),
            "refused_past": self.now - _between(rng, REFUSED_PAST),
        }
        return self.ns(edges[style])

    def late_start(self, kind: str) -> int:
        """A start in an hour, a day or a week that phase 1 filled and the first sync covered:
        complete buckets only, so the rows are late for a rollup already materialized."""
        rng = self.rng
        synced = [s for s in self.synced_starts if s < self.ns(self.now - 3 * HOUR)]
        base = datetime.fromtimestamp(rng.choice(synced) / 1e9, UTC) if synced else self.lo
        if kind == "hour":
            hour = floor_hour(base)
            return self.uniform(hour, hour + timedelta(minutes=55))
        if kind == "day":
            day = base.replace(hour=0, minute=0, second=0, microsecond=0)
            lo, hi = max(day, self.lo), min(day + DAY, self.now - 3 * HOUR)
            return self.uniform(lo, hi) if lo < hi else self.uniform(self.lo, self.lo + HOUR)
        # the oldest complete week: already rolled up to a weekly row in phase 1
        return self.uniform(self.lo, min(self.mondays[0], self.now - 3 * HOUR))

    # --- users ---------------------------------------------------------------------------------

    def who(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "user": rng.choice(self.users) if rng.random() < 0.85 else None,
            "session": rng.choice(self.sessions) if rng.random() < 0.8 else None,
            "kb": rng.choice(self.kbs) if rng.random() < 0.75 else None,
        }

    # --- plans and deliveries -------------------------------------------------------------------

    def plan(self, shape: str, paths: tuple[str, ...] = (SDK, JSON, BULK)) -> Plan:
        plan = Plan(self.ids.trace(), self.rng.choice(paths), shape)
        self.plans.append(plan)
        self.shapes[shape] += 1
        return plan

    def deliver(
        self,
        plan: Plan,
        phase: int,
        *groups: list[OtlpSpan],
        copies: int = 1,
        bulk_cost: dict[str, Decimal] | None = None,
    ) -> None:
        """One step of a trace: each group is one export; copies > 1 sends each export that
        many times at once (an exporter retrying while its first attempt still runs)."""
        exports: list[Export] = []
        for group in groups:
            for span in group:
                plan.latest[span.span_id] = span
                if phase == 0 and span.parent_id is None and not plan.shape.startswith("ref"):
                    self.synced_starts.append(span.start_ns)
            if plan.path == BULK:
                exports.append(self._bulk_export(plan, group, bulk_cost or {}))
            else:
                exports.append(OtlpExport(plan.path, tuple(group)))
        plan.steps.append((phase, exports * copies))

    def _bulk_export(
        self, plan: Plan, group: list[OtlpSpan], costs: dict[str, Decimal]
    ) -> BulkExport:
        rng = self.rng
        spans = []
        for span in group:
            duration = None
            if span.end_ns is not None and rng.random() < 0.3:
                # the application's own measurement, as sent
                duration = max(0, (span.end_ns - span.start_ns) // 1_000_000 - rng.randrange(3))
                duration = duration if duration <= INT4_MAX else None
            spans.append(bulk_span(span, rng, costs.get(span.span_id), duration))
        traces = []
        for root in (s for s in group if s.parent_id is None):
            tokens = [
                (s.attributes.get("gen_ai.usage.input_tokens") or 0)
                + (s.attributes.get("gen_ai.usage.output_tokens") or 0)
                for s in plan.latest.values()
            ]
            total = sum(tokens) if rng.random() < 0.8 else None
            cost = Decimal(rng.randrange(0, 3_000_000)) / 1_000_000 if rng.random() < 0.6 else None
            traces.append(
                bulk_trace(
                    root,
                    rng,
                    total_tokens=total if total and total <= INT4_MAX else None,
                    cost=cost,
                )
            )
        return BulkExport(traces=tuple(traces), spans=tuple(spans))

    def documents(self, phase: int, events: list[dict[str, Any]], copies: int = 1) -> None:
        export = BulkExport(document_events=tuple(events))
        self.document_steps.append((phase, Step((export,) * copies, "documents")))

    # --- assembling -----------------------------------------------------------------------------

    def traffic(self) -> Traffic:
        phases = [self._interleave(p) for p in (0, 1)]
        times = []  # every version sent, also those replaced later: each phase is synced
        for steps in phases:
            for step in steps:
                for export in step.exports:
                    if isinstance(export, OtlpExport):
                        times += [datetime_to_ns(ns_to_datetime(s.start_ns)) for s in export.spans]
                    else:
                        items = list(export.traces) + list(export.spans)
                        times += [datetime_to_ns(i["started_at"]) for i in items]
                        times += [datetime_to_ns(e["created_at"]) for e in export.document_events]
        lo, hi = self.ns(self.now - timedelta(days=30)), self.ns(self.now + HOUR)
        accepted = [t for t in times if lo <= t <= hi]
        start = ns_to_datetime(min(accepted)).replace(microsecond=0)
        end = ns_to_datetime(max(accepted)).replace(microsecond=0) + timedelta(seconds=1)
        if self.dst is None:
            self.notes.append(
                "no time zone changes its UTC offset between "
                f"{(self.lo + DAY).date()} and {(self.hi - DAY).date()} (inside raw retention): "
                "metrics_by_local_day is checked for America/New_York, without a DST change"
            )
        else:
            self.notes.append(f"DST: {self.dst[0]} changes its UTC offset at {self.dst[1]}")
        shape_of = {plan.trace_id: plan.shape for plan in self.plans}
        return Traffic(
            self.seed,
            self.now,
            phases,
            dict(self.shapes),
            start,
            end,
            self.dst,
            shape_of,
            self.notes,
        )

    def _interleave(self, phase: int) -> list[Step]:
        """Every trace's steps in its own order; steps of different traces are shuffled
        together, often batched into one export (as a batching exporter or an application
        flushing a buffer does) and sometimes sent at the same time."""
        rng = self.rng
        queues = [
            [(exports, plan.shape) for p, exports in plan.steps if p == phase]
            for plan in self.plans
        ]
        queues = [q for q in queues if q]
        docs = [step for p, step in self.document_steps if p == phase]
        steps: list[Step] = []
        while queues:
            i = rng.randrange(len(queues))
            exports, label = queues[i].pop(0)
            exports = list(exports)
            labels = [label]
            others = [j for j in rng.sample(range(len(queues)), min(4, len(queues))) if j != i]
            if len(exports) == 1 and rng.random() < 0.7:
                for j in others:
                    nxt = queues[j][0][0] if queues[j] else None
                    if nxt is not None and len(nxt) == 1 and _batchable(exports[0], nxt[0]):
                        exports = [_batch(exports[0], nxt[0])]
                        labels.append(queues[j].pop(0)[1])
                if isinstance(exports[0], BulkExport) and docs and len(docs[0].exports) == 1:
                    exports = [_batch(exports[0], docs.pop(0).exports[0])]
            elif rng.random() < 0.3:
                # exports of other traces at the same time: disjoint spans, so order-free
                for j in others[:2]:
                    if queues[j]:
                        more, more_label = queues[j].pop(0)
                        exports += more
                        labels.append(more_label)
            steps.append(Step(tuple(exports), "+".join(labels)))
            queues = [q for q in queues if q]
            if docs and rng.random() < 0.2:
                steps.append(docs.pop(0))
        return steps + docs


def _batchable(a: Export, b: Export) -> bool:
    return type(a) is type(b) and a.path == b.path


def _batch(a: Export, b: Export) -> Export:
    if isinstance(a, OtlpExport) and isinstance(b, OtlpExport):
        return OtlpExport(a.path, a.spans + b.spans)
    assert isinstance(a, BulkExport) and isinstance(b, BulkExport)
    return BulkExport(a.traces + b.traces, a.spans + b.spans, a.document_events + b.document_events)


def _between(rng: random.Random, bounds: tuple[timedelta, timedelta]) -> timedelta:
    return timedelta(seconds=rng.randrange(*(int(b.total_seconds()) for b in bounds)))


def generate(seed: int, now: datetime, traces: int = 250, documents: int = 120) -> Traffic:
    from tests.oracle.shapes import build

    generator = Generator(seed, now, traces, documents)
    build(generator)
    return generator.traffic()
