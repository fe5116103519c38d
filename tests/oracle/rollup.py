from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.oracle.expected import Expected

# Every row of observability.metrics the store must publish, computed from the oracle's rows:
# one per granularity, bucket, metric and dimension value with count > 0. Buckets are UTC;
# weeks start on Monday 00:00 UTC.

GRANULARITIES = ("hour", "day", "week")
WIDTHS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
_MONDAY = datetime(2000, 1, 3, tzinfo=UTC)
# Metrics whose percentiles come from a sketch; the others have NULL p50/p95/p99.
SKETCHED = {
    "trace.duration_ms",
    "trace.total_tokens",
    "llm.duration_ms",
    "llm.time_to_first_token_ms",
    "document.duration_ms",
}
# Metrics that count rows as observations of 0 or 1 (status error; cost unknown).
INDICATORS = {"trace.errors", "llm.errors", "document.errors", "llm.cost_unknown"}

Key = tuple[str, datetime, str, str, str]  # granularity, bucket, metric, dimension type, value


@dataclass
class Cell:
    """The observations of one metric in one bucket and dimension value."""

    values: list[Any] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def sum(self) -> Decimal:
        return sum((Decimal(v) for v in self.values), Decimal(0))


def bucket(moment: datetime, granularity: str) -> datetime:
    moment = moment.astimezone(UTC)
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return _MONDAY + ((moment - _MONDAY) // timedelta(weeks=1)) * timedelta(weeks=1)


Observation = tuple[datetime, list[tuple[str, str]], dict[str, Any]]


def observations(expected: Expected) -> Iterable[Observation]:
    """(time, dimension values, metric values) per raw row feeding a rollup. None values are not
    observations (SQL aggregates skip NULL), except for the row-count metrics."""
    for t in expected.traces.values():
        dims = [("overall", ""), ("operation_type", t.operation_type)]
        dims += [("kb", str(t.kb_id))] if t.kb_id is not None else []
        dims += [("user", str(t.user_id))] if t.user_id is not None else []
        yield (
            t.started_at,
            dims,
            {
                "trace.duration_ms": t.duration_ms,
                "trace.total_tokens": t.total_tokens,
                "trace.cost_usd": t.cost_usd,
                "trace.errors": int(t.status == "error"),
            },
        )
    for s in expected.spans.values():
        if s.span_type != "llm":
            continue
        dims = [("overall", "")]
        dims += [("model", s.model)] if s.model is not None else []
        dims += [("provider", s.provider)] if s.provider is not None else []
        yield (
            s.started_at,
            dims,
            {
                "llm.duration_ms": s.duration_ms,
                "llm.time_to_first_token_ms": s.time_to_first_token_ms,
                "llm.input_tokens": s.input_tokens,
                "llm.output_tokens": s.output_tokens,
                "llm.cost_usd": s.cost_usd,
                "llm.errors": int(s.status == "error"),
                "llm.cost_unknown": int(s.cost_usd is None),
            },
        )
    for d in expected.documents.values():
        yield (
            d.created_at,
            [("overall", ""), ("event_type", d.event_type)],
            {
                "document.duration_ms": d.duration_ms,
                "document.errors": int(d.status == "error"),
            },
        )


def cells(
    expected: Expected, bucket_of: Callable[[datetime], datetime | None], granularity: str
) -> dict[Key, Cell]:
    result: dict[Key, Cell] = {}
    for moment, dims, metrics in observations(expected):
        start = bucket_of(moment)
        if start is None:
            continue
        for metric, value in metrics.items():
            if value is None:
                continue
            for dim_type, dim_value in dims:
                key = (granularity, start, metric, dim_type, dim_value)
                result.setdefault(key, Cell()).values.append(value)
    return result


def metric_cells(expected: Expected) -> dict[Key, Cell]:
    """The cells of observability.metrics (and of metrics_aggregates once synced)."""
    result: dict[Key, Cell] = {}
    for granularity in GRANULARITIES:
        result.update(cells(expected, lambda m, g=granularity: bucket(m, g), granularity))
    return result


def local_day_cells(
    expected: Expected, zone_name: str, start: datetime, end: datetime
) -> dict[Key, Cell]:
    """observability.metrics_by_local_day(zone, start, end): hourly buckets starting in
    [start, end), grouped by the local day (local midnight) in which each hour starts."""
    zone = zoneinfo.ZoneInfo(zone_name)

    def local_day(moment: datetime) -> datetime | None:
        hour = bucket(moment, "hour")
        if not start <= hour < end:
            return None
        local = hour.astimezone(zone)
        midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
        return midnight.astimezone(UTC)

    return cells(expected, local_day, "day")
