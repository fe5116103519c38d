from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

# Plain-text renderings shared by the command line and the demo's summary.


def format_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S%z") if value is not None else "-"


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if seconds and not days:
        parts.append(f"{seconds}s")
    return sign + (" ".join(parts) or "0s")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [list(header), *rows]
    ]
