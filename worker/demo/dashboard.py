from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from worker.demo.summary import Summary, html_table  # noqa: E402
from worker.demo.workload import KB_NAMES, KNOWLEDGE_BASES  # noqa: E402
from worker.rollups.windows import bucket_floor  # noqa: E402

_SERIES = """
select bucket_time, dimension_value, p50_value, p95_value, p99_value, avg_value, sum_value
from observability.metrics_aggregates
where granularity = %s and metric_type = %s and dimension_type = %s
  and bucket_time >= %s and bucket_time < %s
order by bucket_time
"""
_KB_TOTALS = """
select dimension_value, metric_type, sum
from observability.metrics_over_range(%s, %s)
where dimension_type = 'kb' and metric_type in ('trace.total_tokens', 'trace.cost_usd')
"""
_COLORS = plt.get_cmap("tab10").colors


@dataclass(frozen=True)
class Point:
    bucket: datetime
    p50: float | None
    p95: float | None
    p99: float | None
    avg: float | None
    sum: float | None


Series = dict[str, list[Point]]  # dimension value -> points in time order


def _series(
    conn: Any, granularity: str, metric: str, dimension: str, start: datetime, end: datetime
) -> Series:
    series: Series = defaultdict(list)
    for bucket, value, *numbers in conn.execute(
        _SERIES, [granularity, metric, dimension, start, end]
    ).fetchall():
        series[value].append(Point(bucket, *numbers))
    return dict(sorted(series.items()))


def render_png(conn: Any, start: datetime, end: datetime, path: Path) -> Path:
    """Latency percentiles by model, error rate, cost and tokens by knowledge base, as a PNG."""
    latency = _series(conn, "hour", "llm.duration_ms", "model", start, end)
    errors = _series(conn, "hour", "trace.errors", "operation_type", start, end)
    overall_errors = _series(conn, "hour", "trace.errors", "overall", start, end).get("", [])
    first_day = bucket_floor(start, "day")
    daily_cost = _series(conn, "day", "trace.cost_usd", "kb", first_day, end)
    totals: dict[str, dict[str, float]] = defaultdict(dict)
    for kb, metric, total in conn.execute(_KB_TOTALS, [start, end]).fetchall():
        totals[KB_NAMES.get(kb, kb)][metric] = float(total or 0)

    fig = plt.figure(figsize=(16, 17), dpi=100, layout="constrained")
    grid = fig.add_gridspec(4, 2, height_ratios=[1, 1, 0.9, 1])
    fig.suptitle(
        f"LLM/RAG workload, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC\n"
        "per hour and per day from observability.metrics_aggregates, "
        "whole-window totals from observability.metrics_over_range",
        fontsize=15,
        fontweight="bold",
    )
    first: Axes | None = None
    for index, (model, points) in enumerate(latency.items()):
        if index >= 4:
            break
        ax = fig.add_subplot(grid[index // 2, index % 2], sharey=first)
        first = first or ax
        _latency_panel(ax, model, points, _COLORS[index])
    _error_panel(fig.add_subplot(grid[2, :]), errors, overall_errors)
    _cost_panel(fig.add_subplot(grid[3, 0]), daily_cost)
    _token_panel(fig.add_subplot(grid[3, 1]), totals)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _time_axis(ax: Axes) -> None:
    ax.xaxis.set_major_locator(mdates.DayLocator(tz="UTC"))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%a %d %b", tz="UTC"))
    ax.set_xlabel("time (UTC, hourly buckets)")
    ax.grid(True, alpha=0.3)


def _latency_panel(ax: Axes, model: str, points: Sequence[Point], color: Any) -> None:
    times = [p.bucket for p in points]
    p50 = [p.p50 for p in points]
    p95 = [p.p95 for p in points]
    p99 = [p.p99 for p in points]
    ax.fill_between(times, p50, p95, color=color, alpha=0.18, label="p50 to p95")
    ax.plot(times, p50, color=color, linewidth=1.2, label="p50")
    ax.plot(times, p95, color=color, linewidth=1.8, alpha=0.9, label="p95")
    ax.plot(times, p99, color="black", linewidth=0.9, linestyle=":", label="p99")
    ax.set_title(f"{model}: LLM call latency percentiles per hour", fontsize=12)
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.legend(loc="upper left", fontsize=9, ncol=4)
    _time_axis(ax)


def _error_panel(ax: Axes, by_operation: Series, overall: Sequence[Point]) -> None:
    for index, (operation, points) in enumerate(by_operation.items()):
        ax.plot(
            [p.bucket for p in points],
            [100 * (p.avg or 0) for p in points],
            color=_COLORS[(index + 4) % 10],
            linewidth=1,
            alpha=0.8,
            label=operation,
        )
    ax.plot(
        [p.bucket for p in overall],
        [100 * (p.avg or 0) for p in overall],
        color="black",
        linewidth=2,
        label="all traces",
    )
    ax.set_title("trace error rate per hour by operation", fontsize=12)
    ax.set_ylabel("error rate (% of traces)")
    ax.legend(loc="upper left", fontsize=9, ncol=4)
    _time_axis(ax)


def _cost_panel(ax: Axes, daily: Series) -> None:
    days = sorted({p.bucket for points in daily.values() for p in points})
    bottom = [0.0] * len(days)
    names = {KB_NAMES.get(kb, kb): kb for kb in daily}
    for index, name in enumerate(n for n in KNOWLEDGE_BASES if n in names):
        by_day = {p.bucket: p.sum or 0.0 for p in daily[names[name]]}
        values = [by_day.get(day, 0.0) for day in days]
        ax.bar(days, values, bottom=bottom, width=0.8, label=name, color=_COLORS[index])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("cost per day by knowledge base (partial first and last day)", fontsize=12)
    ax.set_ylabel("cost (USD)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:,.2f}"))
    ax.xaxis.set_major_locator(mdates.DayLocator(tz="UTC"))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%a\n%d %b", tz="UTC"))
    ax.set_xlabel("day (UTC)")
    ax.set_ylim(0, max(bottom, default=1.0) * 1.3 or 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", fontsize=9, ncol=3)


def _token_panel(ax: Axes, totals: dict[str, dict[str, float]]) -> None:
    names = [n for n in KNOWLEDGE_BASES if n in totals] + sorted(
        n for n in totals if n not in KNOWLEDGE_BASES
    )
    tokens = [totals[n].get("trace.total_tokens", 0.0) / 1e6 for n in names]
    bars = ax.barh(names, tokens, color=[_COLORS[i % 10] for i in range(len(names))])
    for bar, name in zip(bars, names, strict=True):
        cost = totals[name].get("trace.cost_usd", 0.0)
        ax.annotate(
            f" {bar.get_width():,.1f} M tokens, ${cost:,.2f}",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=9,
        )
    ax.invert_yaxis()
    ax.set_xlim(0, max(tokens, default=1) * 1.45 or 1)
    ax.set_title(
        "tokens and cost by knowledge base, whole window (metrics_over_range)", fontsize=12
    )
    ax.set_xlabel("tokens (millions)")
    ax.grid(True, axis="x", alpha=0.3)


def render_html(summary: Summary, png: Path, path: Path) -> Path:
    """One self-contained page: the PNG inlined and the summary's tables."""
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    tables = "\n".join(html_table(t) for t in summary.tables)
    title = (
        f"LLM/RAG observability demo, {summary.start:%Y-%m-%d %H:%M} to "
        f"{summary.end:%Y-%m-%d %H:%M} UTC"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
thead {{ background: #f2f2f2; }}
</style></head>
<body><h1>{escape(title)}</h1>
<img alt="dashboard: latency percentiles by model, error rate, cost and tokens by knowledge base"
 src="data:image/png;base64,{image}">
{tables}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
