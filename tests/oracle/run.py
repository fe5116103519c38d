from __future__ import annotations

import time
import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from tests.oracle import observed
from tests.oracle.compare import (
    FLOAT_SUM_TOLERANCE,
    Diff,
    compare_metrics,
    compare_rows,
    report,
)
from tests.oracle.expected import (
    DocumentRow,
    Expected,
    Oracle,
    SpanRow,
    TraceRow,
    read_prices,
)
from tests.oracle.model import JSON, BulkExport, OtlpExport, Traffic
from tests.oracle.rollup import GRANULARITIES, WIDTHS, bucket, local_day_cells, metric_cells
from tests.oracle.send import Outcome, Sender
from tests.oracle.traffic import generate
from worker.rollups import backfill_metrics

# One case: generate traffic, deliver phase 1, sync metrics_aggregates, compare everything,
# deliver phase 2 (late and updated data), sync again, compare everything again, including
# days in a local time zone.

NO_DST_ZONE = "America/New_York"


@dataclass
class CaseResult:
    seed: int
    traffic: Traffic
    diffs: list[Diff] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.diffs

    def report(self) -> str:
        lines = [report(self.seed, self.diffs)] if self.diffs else [f"oracle: seed {self.seed} ok"]
        lines += [f"note: {n}" for n in self.notes]
        lines.append("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def run_case(
    database_url: str,
    endpoint: str,
    seed: int,
    traces: int = 250,
    documents: int = 120,
    now: datetime | None = None,
) -> CaseResult:
    now = now or datetime.now(UTC)
    clock = time.perf_counter()
    problems = observed.reset(database_url, now)
    traffic = generate(seed, now, traces, documents)
    result = CaseResult(seed, traffic, notes=list(traffic.notes) + problems)
    result.timings["setup"] = time.perf_counter() - clock
    oracle = Oracle(traffic, read_prices(observed.prices(database_url)))
    sketch = observed.sketch_implementation(database_url)
    exact_sketch = sketch == "observability"
    if not exact_sketch:
        result.notes.append(
            f"percentile sketch {sketch}: p50/p95/p99 checked within [min, max] only (the "
            "error bound in compare.py is that of the project's own sketch)"
        )
    sender = Sender(database_url, endpoint)
    try:
        for phase, steps in enumerate(traffic.phases, start=1):
            clock = time.perf_counter()
            for step in steps:
                outcomes = sender.send(step)
                for export in step.exports:
                    oracle.apply(export)
                result.diffs += _deliveries(oracle, outcomes, phase)
            result.timings[f"send {phase}"] = time.perf_counter() - clock
            clock = time.perf_counter()
            synced = sync(database_url, traffic)
            result.timings[f"sync {phase}"] = time.perf_counter() - clock
            clock = time.perf_counter()
            result.diffs += check(
                database_url, oracle, traffic, phase, synced, exact_sketch, result.notes
            )
            result.timings[f"check {phase}"] = time.perf_counter() - clock
            if phase == 1:
                clock = time.perf_counter()
                chunks = observed.compress(database_url)
                result.notes.append(f"{chunks} raw chunks compressed before phase 2")
                result.timings["compress"] = time.perf_counter() - clock
    finally:
        sender.close()
    result.notes.append(
        "exports: "
        + ", ".join(f"{p} {n} ({sender.seconds[p]:.1f}s)" for p, n in sorted(sender.counts.items()))
    )
    return result


def _deliveries(oracle: Oracle, outcomes: list[Outcome], phase: int) -> list[Diff]:
    diffs = []
    for outcome in outcomes:
        export = outcome.export
        where = f"phase {phase} {export.path} export {id(export):x}"
        if not outcome.ok:
            diffs.append(Diff("delivery", where, "result", "accepted", outcome.detail))
        elif isinstance(export, OtlpExport) and export.path == JSON:
            want = oracle.refusals.json_counts.get(id(export), 0)
            if outcome.rejected_spans != want:
                got = f"{outcome.rejected_spans} ({outcome.detail[:200]})"
                diffs.append(Diff("delivery", where, "rejected_spans", want, got))
            # a total stored as NULL because it does not fit is named in a warning (unless the
            # message was cut short after its first reasons)
            for trace_id in sorted(oracle.refusals.json_warnings.get(id(export), ())):
                if trace_id not in outcome.detail and " more" not in outcome.detail:
                    got = repr(outcome.detail[:200])
                    diffs.append(Diff("delivery", where, "warning", f"names {trace_id}", got))
        elif isinstance(export, BulkExport):
            want_items = oracle.refusals.bulk_items.get(id(export), set())
            if outcome.rejected_items != want_items:
                got = f"{sorted(outcome.rejected_items or ())} ({outcome.detail[:200]})"
                diffs.append(Diff("delivery", where, "rejects", sorted(want_items), got))
    return diffs


def sync(database_url: str, traffic: Traffic) -> dict[str, tuple[datetime, datetime]]:
    """The worker's backfill over the traffic's range, for every granularity, up to now (a
    backfill refuses buckets after the one holding now: rows ahead of the clock reach
    metrics_aggregates with a later run). Returns the buckets synced per granularity."""
    now = datetime.now(UTC)
    end = min(traffic.end, now)
    windows = {}
    for granularity in GRANULARITIES:
        backfill_metrics(traffic.start, end, granularity, database_url=database_url, now=now)
        last = bucket(end, granularity)
        windows[granularity] = (
            bucket(traffic.start, granularity),
            last if last == end else last + WIDTHS[granularity],
        )
    return windows


def check(
    database_url: str,
    oracle: Oracle,
    traffic: Traffic,
    phase: int,
    synced: dict[str, tuple[datetime, datetime]],
    exact_sketch: bool,
    notes: list[str],
) -> list[Diff]:
    expected = oracle.expected()
    start = bucket(traffic.start, "week")
    end = traffic.now + timedelta(days=2)
    seen = observed.read(database_url, start, end)
    missing = sorted(set(observed.METRIC_TYPES) - seen.metric_types)
    if missing and phase == 1:
        notes.append(f"observability.metric_sketches has no metric {', '.join(missing)}")
    cells = metric_cells(expected)
    rows = compare_rows(expected, seen.traces, seen.spans, seen.documents)
    suspects = _suspects(rows, expected, seen)
    tainted = set(metric_cells(suspects))
    metrics = compare_metrics("metrics", cells, seen.metrics, sketch_bound=exact_sketch)
    in_sync = {k: c for k, c in cells.items() if synced[k[0]][0] <= k[1] < synced[k[0]][1]}
    metrics += compare_metrics(
        "metrics_aggregates", in_sync, seen.aggregates, sketch_bound=exact_sketch
    )
    diffs = [replace(d, shape=_shape(d, traffic)) for d in rows]
    diffs += [replace(d, explained=d.ref in tainted) for d in metrics]
    if phase == len(traffic.phases):
        zone, days = local_window(traffic)
        local = local_day_cells(expected, zone, *days)
        tainted = set(local_day_cells(suspects, zone, *days))
        found = observed.local_days(database_url, zone, *days)
        diffs += [
            replace(d, key=f"{d.key} ({zone})", explained=d.ref in tainted)
            for d in compare_metrics(
                "metrics_by_local_day",
                local,
                found,
                sketch_bound=exact_sketch,
                sum_tolerance=FLOAT_SUM_TOLERANCE,
            )
        ]
    return [replace(d, key=f"{d.key} (phase {phase})") for d in diffs]


def _shape(diff: Diff, traffic: Traffic) -> str:
    if diff.view == "document_events":
        return "documents"
    trace_id = diff.ref if isinstance(diff.ref, str) else diff.ref[0]
    return traffic.shape_of.get(trace_id, "?")


def _suspects(rows: list[Diff], expected: Expected, seen: observed.Observed) -> Expected:
    """The expected and the stored versions of every row that differs: the metric cells they
    count in may differ because of them."""
    ids = {d.view: set() for d in rows}
    for d in rows:
        ids[d.view].add(d.ref)
    traces = {
        ("expected", k): expected.traces[k] for k in ids.get("traces", ()) if k in expected.traces
    }
    spans = {
        ("expected", k): expected.spans[k] for k in ids.get("spans", ()) if k in expected.spans
    }
    documents = {
        ("expected", k): expected.documents[k]
        for k in ids.get("document_events", ())
        if k in expected.documents
    }
    for i, row in enumerate(seen.traces):
        if row["trace_id"] in ids.get("traces", ()):
            traces[("stored", i)] = TraceRow(**row)
    for i, row in enumerate(seen.spans):
        if (row["trace_id"], row["span_id"]) in ids.get("spans", ()):
            spans[("stored", i)] = SpanRow(**row)
    for i, row in enumerate(seen.documents):
        if (row["id"], row["created_at"]) in ids.get("document_events", ()):
            documents[("stored", i)] = DocumentRow(**row)
    return Expected(traces, spans, documents)  # type: ignore[arg-type]


def local_window(traffic: Traffic) -> tuple[str, tuple[datetime, datetime]]:
    """The zone and the local midnights around the traffic, for metrics_by_local_day: the zone
    with a DST change inside the range when there is one."""
    name = traffic.dst[0] if traffic.dst else NO_DST_ZONE
    zone = zoneinfo.ZoneInfo(name)
    first = traffic.start.astimezone(zone)
    last = traffic.end.astimezone(zone)
    start = datetime(first.year, first.month, first.day, tzinfo=zone)
    end = datetime(last.year, last.month, last.day, tzinfo=zone) + timedelta(days=1)
    return name, (start.astimezone(UTC), end.astimezone(UTC))
