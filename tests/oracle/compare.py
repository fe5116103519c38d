from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from tests.oracle.expected import DocumentRow, Expected, SpanRow, TraceRow
from tests.oracle.rollup import INDICATORS, SKETCHED, Cell, Key

# The percentile sketch (sql/incremental/008-percentile-sketch.sql) puts a value v > 0 in the
# bucket (g^(i-1), g^i] with i = ceil(ln v / ln g), g = 1.01, and reports the bucket by
# 2 g^i / (g + 1): within a relative A = (g - 1) / (g + 1) (about 0.4975 %) of every value in it.
# approx_percentile(q) takes h = q (n - 1) and interpolates linearly between the reported values
# at ranks floor(h) + 1 and ceil(h) + 1 (1-based; rank 1 and rank n report the exact min and
# max), then clamps to [min, max]. So, with x_lo and x_hi the exact order statistics at those
# ranks, the value lies in [x_lo (1 - A), x_hi (1 + A)]. SLACK covers the floating-point
# rounding of ln() at a bucket boundary, which can move a value into the neighbouring bucket.
GAMMA = 1.01
A = (GAMMA - 1) / (GAMMA + 1)
SLACK = 1e-9
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
AVG_TOLERANCE = 1e-12  # relative; sum / count in float8
# metrics_by_local_day adds up the hourly float8 sums, in an order SQL does not fix: a few units
# in the last place apart from the exact sum converted once. The views of the rollups convert
# each exact (numeric or bigint) sum once, and are compared exactly.
FLOAT_SUM_TOLERANCE = 1e-12


def percentile_bounds(values: list[float], q: float) -> tuple[float, float]:
    ordered = sorted(values)
    h = q * (len(ordered) - 1)
    x_lo, x_hi = ordered[math.floor(h)], ordered[math.ceil(h)]
    return x_lo * (1 - A - SLACK), x_hi * (1 + A + SLACK)


@dataclass(frozen=True)
class Diff:
    view: str
    key: str
    field: str
    expected: Any
    observed: Any
    ref: Any = None  # the row's id, or the metric cell's Key
    # a metric difference that follows from a differing row (the row counts in that cell)
    explained: bool = False
    shape: str = ""  # of a row: the generator's shape of its trace

    def line(self) -> str:
        shape = f" [{self.shape}]" if self.shape else ""
        return (
            f"{self.view:<18} {self.key}{shape} {self.field}: expected {_show(self.expected)}, "
            f"observed {_show(self.observed)}"
        )


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value) if not isinstance(value, str) else repr(value)


def _key(key: Key) -> str:
    granularity, bucket, metric, dim_type, dim_value = key
    dim = f"{dim_type}={dim_value!r}" if dim_type != "overall" else "overall"
    return f"{granularity:<4} {bucket:%Y-%m-%dT%H:%MZ} {metric} {dim}"


def metric_row(metric: str, cell: Cell) -> dict[str, Any]:
    """The expected row: sums computed exactly (Decimal) and converted to float8 once."""
    total = cell.sum
    row: dict[str, Any] = {
        "count": cell.count,
        "sum": float(total),
        "min": float(min(Decimal(v) for v in cell.values)),
        "max": float(max(Decimal(v) for v in cell.values)),
        "avg": float(total) / cell.count,
    }
    if metric in INDICATORS:  # min 1 when every row counts, max 1 when any does
        row["min"], row["max"] = float(min(cell.values)), float(max(cell.values))
    return row


def compare_metrics(
    view: str,
    expected: Mapping[Key, Cell],
    observed: Iterable[Mapping[str, Any]],
    *,
    sketch_bound: bool = True,
    sum_tolerance: float = 0.0,
) -> list[Diff]:
    """expected cells against rows of observability.metrics (or its copies)."""
    diffs: list[Diff] = []
    seen: dict[Key, Mapping[str, Any]] = {}
    for row in observed:
        key = (
            row["granularity"],
            row["bucket"],
            row["metric_type"],
            row["dimension_type"],
            row["dimension_value"],
        )
        if key in seen:
            diffs.append(Diff(view, _key(key), "row", "one row", "a duplicate row"))
        seen[key] = row
    for key in sorted(set(expected) | set(seen), key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
        cell, row = expected.get(key), seen.get(key)
        name = _key(key)
        if row is None:
            diffs.append(Diff(view, name, "row", f"count {cell.count}", "missing", key))  # type: ignore[union-attr]
            continue
        if cell is None:
            diffs.append(Diff(view, name, "row", "no row", f"count {row['count']}", key))
            continue
        want = metric_row(key[2], cell)
        for column in ("count", "sum", "min", "max"):
            got = row[column]
            if (
                column == "sum"
                and sum_tolerance
                and got is not None
                and math.isclose(got, want[column], rel_tol=sum_tolerance, abs_tol=0.0)
            ):
                continue
            if got != want[column]:
                diffs.append(Diff(view, name, column, want[column], got, key))
        if row["avg"] is None or not math.isclose(
            row["avg"], want["avg"], rel_tol=AVG_TOLERANCE, abs_tol=0.0
        ):
            diffs.append(Diff(view, name, "avg", want["avg"], row["avg"], key))
        for column, q in QUANTILES:
            got = row[column]
            if key[2] not in SKETCHED:
                if got is not None:
                    diffs.append(Diff(view, name, column, None, got, key))
                continue
            values = [float(v) for v in cell.values]
            lo, hi = percentile_bounds(values, q)
            if not sketch_bound:
                lo, hi = min(values), max(values)
            if got is None or not lo <= got <= hi:
                diffs.append(Diff(view, name, column, f"in [{lo!r}, {hi!r}]", got, key))
    return diffs


# --- raw rows ---------------------------------------------------------------------------------

TRACE_FIELDS = tuple(f.name for f in fields(TraceRow))
SPAN_FIELDS = tuple(
    f.name
    for f in fields(SpanRow)
    if f.name not in ("operation_type", "user_id", "session_id", "seq")
)
DOCUMENT_FIELDS = tuple(f.name for f in fields(DocumentRow))


def _rows(
    view: str,
    expected: Mapping[Any, Any],
    observed: list[dict[str, Any]],
    key_of: Any,
    columns: tuple[str, ...],
) -> list[Diff]:
    diffs = []
    seen: dict[Any, dict[str, Any]] = {}
    counts = Counter(key_of(row) for row in observed)
    for key, n in counts.items():
        if n > 1:
            diffs.append(Diff(view, str(key), "rows", 1, n, key))
    for row in observed:
        key = key_of(row)
        # of duplicates, compare the one that starts when the expected row does
        if key not in seen or _started(row) == _started_of(expected.get(key)):
            seen[key] = row
    for key in sorted(set(expected) | set(seen), key=str):
        want, got = expected.get(key), seen.get(key)
        if got is None:
            diffs.append(Diff(view, str(key), "row", "present", "missing", key))
        elif want is None:
            diffs.append(Diff(view, str(key), "row", "absent", f"started {_started(got)}", key))
        else:
            for column in columns:
                if getattr(want, column) != got[column]:
                    diffs.append(
                        Diff(view, str(key), column, getattr(want, column), got[column], key)
                    )
    return diffs


def _started_of(row: Any) -> Any:
    value = getattr(row, "started_at", getattr(row, "created_at", None))
    return value.isoformat() if isinstance(value, datetime) else value


def _started(row: dict[str, Any]) -> Any:
    value = row.get("started_at", row.get("created_at"))
    return value.isoformat() if isinstance(value, datetime) else value


def compare_rows(
    expected: Expected,
    observed_traces: list[dict[str, Any]],
    observed_spans: list[dict[str, Any]],
    observed_documents: list[dict[str, Any]],
) -> list[Diff]:
    return (
        _rows("traces", expected.traces, observed_traces, lambda r: r["trace_id"], TRACE_FIELDS)
        + _rows(
            "spans",
            expected.spans,
            observed_spans,
            lambda r: (r["trace_id"], r["span_id"]),
            SPAN_FIELDS,
        )
        + _rows(
            "document_events",
            expected.documents,
            observed_documents,
            lambda r: (r["id"], r["created_at"]),
            DOCUMENT_FIELDS,
        )
    )


def is_row(diff: Diff) -> bool:
    return not diff.view.startswith("metric")


def report(seed: int, diffs: list[Diff], limit: int = 30) -> str:
    """A compact account: counts per view, metric and field (metric differences that follow
    from a differing row apart), then the first differences, those of rows first."""
    own = [d for d in diffs if not d.explained]
    groups = Counter((d.view, d.shape if is_row(d) else d.key.split()[2], d.field) for d in own)
    lines = [
        f"oracle: {len(diffs)} differences (seed {seed}; replay: make fuzz FUZZ_SEED={seed}); "
        f"{len(diffs) - len(own)} of them in metric cells that a differing row counts in"
    ]
    for (view, metric, column), n in groups.most_common(20):
        lines.append(f"  {n:5d}  {view} {metric} {column}".rstrip())
    ordered = sorted(diffs, key=lambda d: (not is_row(d), d.explained))
    lines.append("first differences:")
    lines += ["  " + d.line() for d in ordered[:limit]]
    return "\n".join(lines)
