from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# Expands a Grafana PostgreSQL panel query the way Grafana does before sending it: template
# variables first (dashboard variables and the global $__interval, $__from, ...), then the SQL
# macros ($__timeFilter(col), ...). Only what Grafana documents for its PostgreSQL datasource;
# anything else raises MacroError, so a dashboard using something unsupported fails loudly.


class MacroError(ValueError):
    """A query uses a macro or variable that cannot be expanded."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval: timedelta  # what Grafana would pick for $__interval

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise MacroError("the time range needs time-zone-aware datetimes")
        if self.start >= self.end:
            raise MacroError(f"empty time range {self.start} .. {self.end}")
        if self.interval <= timedelta(0):
            raise MacroError(f"interval must be positive, got {self.interval}")


@dataclass(frozen=True)
class Variable:
    name: str
    multi: bool = False
    include_all: bool = False


_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
_INTERVAL = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
# $name, ${name}, ${name:format} and the deprecated [[name]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)(?!\w|\()|\[\[(\w+)\]\]")
_MACRO = re.compile(r"\$__(\w+)\(")


def parse_interval(text: str) -> timedelta:
    match = _INTERVAL.match(text.strip().strip("'\""))
    if match is None:
        raise MacroError(f"not a Grafana interval: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_interval(interval: timedelta) -> str:
    """The largest unit that divides the interval evenly, as Grafana writes $__interval."""
    ms = interval // timedelta(milliseconds=1)
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit] // timedelta(milliseconds=1)
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def rfc3339(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if "." in text:  # Go's RFC3339Nano drops trailing zeros of the fraction
        whole, fraction = text[:-1].split(".")
        text = f"{whole}.{fraction.rstrip('0')}Z" if fraction.rstrip("0") else f"{whole}Z"
    return text


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def dashboard_variables(dashboard: Mapping[str, Any]) -> dict[str, Variable]:
    found = {}
    for item in dashboard.get("templating", {}).get("list", []):
        found[item["name"]] = Variable(
            item["name"], bool(item.get("multi")), bool(item.get("includeAll"))
        )
    return found


def _format(variable: Variable, value: str | Sequence[str], style: str | None) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        raise MacroError(f"variable ${variable.name} has no value")
    if style in (None, "sqlstring") and (variable.multi or variable.include_all):
        style = "quoted"
    if style is None and len(values) > 1:
        raise MacroError(f"variable ${variable.name} is single-valued, got {values}")
    if style is None:
        return values[0].replace("'", "''")  # Grafana escapes quotes of a single value
    if style in ("quoted", "sqlstring", "singlequote"):
        return ",".join(quote_literal(v) for v in values)
    if style == "csv":
        return ",".join(values)
    if style == "raw":
        return ",".join(values)
    raise MacroError(f"unsupported variable format ${{{variable.name}:{style}}}")


def _globals(time_range: TimeRange) -> dict[str, str]:
    def epoch_ms(moment: datetime) -> str:
        return str(int(moment.timestamp() * 1000))

    return {
        "__interval": format_interval(time_range.interval),
        "__interval_ms": str(time_range.interval // timedelta(milliseconds=1)),
        "__from": epoch_ms(time_range.start),
        "__to": epoch_ms(time_range.end),
        "__range_s": str(int((time_range.end - time_range.start).total_seconds())),
    }


def expand_variables(
    sql: str,
    time_range: TimeRange,
    variables: Mapping[str, Variable],
    values: Mapping[str, str | Sequence[str]],
) -> str:
    builtin = _globals(time_range)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3) or match.group(4)
        style = match.group(2)
        if name in builtin:
            return builtin[name]
        if name.startswith("__"):
            raise MacroError(f"unsupported global variable ${name}")
        if name not in variables:
            raise MacroError(f"${name} is not a variable of this dashboard")
        if name not in values:
            raise MacroError(f"no value given for variable ${name}")
        return _format(variables[name], values[name], style)

    return _VARIABLE.sub(replace, sql)


def _arguments(sql: str, open_at: int) -> tuple[list[str], int]:
    """Comma-separated arguments of the call whose '(' is at open_at, and the index after ')'."""
    depth, start, args = 0, open_at + 1, []
    for i in range(open_at, len(sql)):
        char = sql[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                last = sql[start:i].strip()
                if last or args:
                    args.append(last)
                return args, i + 1
        elif char == "," and depth == 1:
            args.append(sql[start:i].strip())
            start = i + 1
    raise MacroError(f"unbalanced parentheses after {sql[:open_at]!r}")


def _macro(name: str, args: list[str], time_range: TimeRange, timescaledb: bool) -> str:
    start, end = quote_literal(rfc3339(time_range.start)), quote_literal(rfc3339(time_range.end))

    def need(count: int | tuple[int, int]) -> None:
        low, high = (count, count) if isinstance(count, int) else count
        if not low <= len(args) <= high or any(not a for a in args):
            raise MacroError(f"$__{name} takes {count} argument(s), got {args}")

    if name in ("timeFrom", "timeTo"):
        need(0)
        return start if name == "timeFrom" else end
    if name == "timeFilter":
        need(1)
        return f"{args[0]} BETWEEN {start} AND {end}"
    if name == "time":
        need(1)
        return f'{args[0]} AS "time"'
    if name == "timeEpoch":
        need(1)
        return f'extract(epoch from {args[0]}) AS "time"'
    if name == "unixEpochFilter":
        need(1)
        return (
            f"{args[0]} >= {int(time_range.start.timestamp())}"
            f" AND {args[0]} <= {int(time_range.end.timestamp())}"
        )
    if name in ("timeGroup", "timeGroupAlias"):
        need((2, 3))  # the third (fill) argument only changes how Grafana draws gaps
        seconds = int(parse_interval(args[1]).total_seconds())
        if seconds <= 0:
            raise MacroError(f"$__{name} needs an interval of at least 1s, got {args[1]}")
        if timescaledb:
            grouped = f"time_bucket('{seconds}s',{args[0]})"
        else:
            grouped = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
        return f'{grouped} AS "time"' if name == "timeGroupAlias" else grouped
    raise MacroError(f"unsupported macro $__{name}")


def expand_macros(sql: str, time_range: TimeRange, timescaledb: bool = True) -> str:
    out, pos = [], 0
    while (match := _MACRO.search(sql, pos)) is not None:
        args, after = _arguments(sql, match.end() - 1)
        out.append(sql[pos : match.start()])
        out.append(_macro(match.group(1), args, time_range, timescaledb))
        pos = after
    out.append(sql[pos:])
    return "".join(out)


def expand(
    sql: str,
    time_range: TimeRange,
    variables: Mapping[str, Variable] | None = None,
    values: Mapping[str, str | Sequence[str]] | None = None,
    timescaledb: bool = True,
) -> str:
    """The query as Grafana's PostgreSQL datasource would run it for this range and values."""
    expanded = expand_variables(sql, time_range, variables or {}, values or {})
    expanded = expand_macros(expanded, time_range, timescaledb)
    if "$__" in expanded:
        raise MacroError(f"unexpanded Grafana macro left in {expanded!r}")
    return expanded
