from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from worker.demo.workload import KB_NAMES, MODELS
from worker.formatting import format_duration, format_table, format_time

_OVER_RANGE = """
select dimension_type, dimension_value, metric_type, count, sum, avg, p50, p95, p99
from observability.metrics_over_range(%s, %s)
where dimension_type in ('model', 'operation_type', 'kb', 'overall')
"""
_FRESHNESS = """
select f.rollup, f.granularity, f.watermark, f.lag_seconds, f.last_run_status, f.total_runs,
  f.total_failures
from observability.rollup_freshness as f
join observability.granularities as g on g.name = f.granularity
order by f.source, g.position
"""
_AGGREGATES = """
select a.granularity, pg_catalog.count(*), pg_catalog.min(a.bucket_time),
  pg_catalog.max(a.bucket_time), pg_catalog.count(distinct a.metric_type)
from observability.metrics_aggregates as a
join observability.granularities as g on g.name = a.granularity
group by a.granularity, g.position
order by g.position
"""
_PROVIDERS = {model.name: model.provider for model in MODELS}


@dataclass(frozen=True)
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]

    def lines(self) -> list[str]:
        return [self.title, *format_table(self.header, self.rows)]


@dataclass
class Summary:
    start: datetime
    end: datetime
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"workload {format_time(self.start)} .. {format_time(self.end)} (UTC)"]
        for table in self.tables:
            lines += ["", *table.lines()]
        return lines + ([""] + self.notes if self.notes else [])


Metrics = dict[str, dict[str, Any]]  # metric_type -> row of metrics_over_range


def build_summary(conn: psycopg.Connection[Any], start: datetime, end: datetime) -> Summary:
    by_dimension: dict[tuple[str, str], Metrics] = defaultdict(dict)
    cur = conn.execute(_OVER_RANGE, [start, end])
    names = [c.name for c in cur.description or ()]
    for row in cur.fetchall():
        record = dict(zip(names, row, strict=True))
        key = (record["dimension_type"], record["dimension_value"])
        by_dimension[key][record["metric_type"]] = record
    summary = Summary(start, end)
    summary.tables.append(_model_table(by_dimension))
    summary.tables.append(
        _trace_table("by operation (traces)", "operation", "operation_type", by_dimension)
    )
    summary.tables.append(
        _trace_table("by knowledge base (traces)", "knowledge base", "kb", by_dimension)
    )
    summary.tables.append(_freshness_table(conn))
    summary.tables.append(_aggregates_table(conn))
    return summary


def _values(
    by_dimension: dict[tuple[str, str], Metrics], dimension: str
) -> list[tuple[str, Metrics]]:
    return sorted(
        (value, metrics) for (kind, value), metrics in by_dimension.items() if kind == dimension
    )


def _model_table(by_dimension: dict[tuple[str, str], Metrics]) -> Table:
    rows = []
    for model, m in _values(by_dimension, "model"):
        latency = m.get("llm.duration_ms", {})
        rows.append(
            [
                model,
                _PROVIDERS.get(model, "-"),
                _count(latency.get("count")),
                _ms(latency.get("p50")),
                _ms(latency.get("p95")),
                _ms(latency.get("p99")),
                _ms(m.get("llm.time_to_first_token_ms", {}).get("p50")),
                _count(m.get("llm.input_tokens", {}).get("sum")),
                _count(m.get("llm.output_tokens", {}).get("sum")),
                _usd(m.get("llm.cost_usd", {}).get("sum")),
                _rate(m.get("llm.errors", {}).get("avg")),
            ]
        )
    header = ["model", "provider", "calls", "p50 ms", "p95 ms", "p99 ms", "ttft p50 ms"]
    header += ["input tokens", "output tokens", "cost USD", "error rate"]
    return Table("by model (LLM calls)", header, rows)


def _trace_table(
    title: str, label: str, dimension: str, by_dimension: dict[tuple[str, str], Metrics]
) -> Table:
    rows = []
    entries = _values(by_dimension, dimension)
    if dimension == "kb":
        entries = sorted((KB_NAMES.get(v, v), m) for v, m in entries)
    overall = by_dimension.get(("overall", ""))
    if overall is not None:
        entries.append(("all", overall))
    for value, m in entries:
        latency = m.get("trace.duration_ms", {})
        rows.append(
            [
                value,
                _count(latency.get("count")),
                _ms(latency.get("p50")),
                _ms(latency.get("p95")),
                _ms(latency.get("p99")),
                _count(m.get("trace.total_tokens", {}).get("sum")),
                _usd(m.get("trace.cost_usd", {}).get("sum")),
                _rate(m.get("trace.errors", {}).get("avg")),
            ]
        )
    header = [label, "traces", "p50 ms", "p95 ms", "p99 ms", "tokens", "cost USD", "error rate"]
    return Table(title, header, rows)


def _freshness_table(conn: psycopg.Connection[Any]) -> Table:
    rows = []
    for rollup, _, watermark, lag, status, runs, failures in conn.execute(_FRESHNESS).fetchall():
        rows.append(
            [
                f"observability.{rollup}",
                format_time(watermark),
                _lag(lag),
                status or "not yet",
                str(runs),
                str(failures),
            ]
        )
    header = ["rollup", "materialized up to", "lag", "policy last run", "runs", "failures"]
    return Table("rollup freshness (database-side refresh policies)", header, rows)


def _aggregates_table(conn: psycopg.Connection[Any]) -> Table:
    rows = [
        [granularity, _count(count), format_time(first), format_time(last), str(metrics)]
        for granularity, count, first, last, metrics in conn.execute(_AGGREGATES).fetchall()
    ]
    header = ["granularity", "rows", "first bucket", "last bucket", "metric types"]
    return Table("observability.metrics_aggregates (synced by the worker)", header, rows)


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "not materialized"
    if seconds <= 0:
        return "none"
    return format_duration(timedelta(seconds=seconds))


def _count(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def _ms(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def _usd(value: float | None) -> str:
    return f"{value:,.2f}" if value is not None else "-"


def _rate(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def html_table(table: Table) -> str:
    from html import escape

    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    return (
        f"<h2>{escape(table.title)}</h2>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def file_lines(paths: Sequence[tuple[str, str]]) -> list[str]:
    return ["files", *format_table(["what", "where"], [list(p) for p in paths])]
