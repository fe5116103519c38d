from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.dashboard_macros import (
    MacroError,
    TimeRange,
    Variable,
    dashboard_variables,
    expand,
    format_interval,
    parse_interval,
    rfc3339,
)

RANGE = TimeRange(
    start=datetime(2026, 11, 10, 8, 0, tzinfo=UTC),
    end=datetime(2026, 11, 10, 16, 30, tzinfo=UTC),
    interval=timedelta(hours=1),
)
FROM, TO = "'2026-11-10T08:00:00Z'", "'2026-11-10T16:30:00Z'"


def test_time_filter_from_and_to() -> None:
    sql = "select 1 from t where $__timeFilter(bucket) and x < $__timeTo() and y > $__timeFrom()"
    assert expand(sql, RANGE) == (
        f"select 1 from t where bucket BETWEEN {FROM} AND {TO} and x < {TO} and y > {FROM}"
    )


def test_time_and_epoch_columns() -> None:
    assert expand("select $__time(bucket)", RANGE) == 'select bucket AS "time"'
    assert expand("select $__timeEpoch(b)", RANGE) == 'select extract(epoch from b) AS "time"'
    start, end = int(RANGE.start.timestamp()), int(RANGE.end.timestamp())
    assert expand("$__unixEpochFilter(ts)", RANGE) == f"ts >= {start} AND ts <= {end}"


def test_time_group_with_interval_variable() -> None:
    sql = (
        "select $__timeGroupAlias(bucket, $__interval), sum(x) group by $__timeGroup(bucket, '5m')"
    )
    assert expand(sql, RANGE) == (
        "select time_bucket('3600s',bucket) AS \"time\", sum(x) group by time_bucket('300s',bucket)"
    )
    plain = expand("$__timeGroup(bucket, 1h, 0)", RANGE, timescaledb=False)
    assert plain == "floor(extract(epoch from bucket)/3600)*3600"


def test_global_variables() -> None:
    sql = "$__interval $__interval_ms ${__interval} $__from $__to $__range_s"
    start_ms, end_ms = int(RANGE.start.timestamp() * 1000), int(RANGE.end.timestamp() * 1000)
    assert expand(sql, RANGE) == f"1h 3600000 1h {start_ms} {end_ms} 30600"


def test_single_value_variable_is_raw_with_quotes_doubled() -> None:
    variables = {"granularity": Variable("granularity"), "name": Variable("name")}
    sql = "where g = '$granularity' and n = '${name}' and m = '[[granularity]]'"
    expanded = expand(sql, RANGE, variables, {"granularity": "day", "name": "o'brien"})
    assert expanded == "where g = 'day' and n = 'o''brien' and m = 'day'"


def test_multi_value_variable_is_a_quoted_list() -> None:
    variables = {"model": Variable("model", multi=True, include_all=True)}
    values = {"model": ["gpt-4", "it's"]}
    assert expand("m in ($model)", RANGE, variables, values) == "m in ('gpt-4','it''s')"
    assert expand("${model:csv}", RANGE, variables, values) == "gpt-4,it's"
    assert expand("${model:singlequote}", RANGE, variables, values) == "'gpt-4','it''s'"


def test_variables_come_from_the_dashboard() -> None:
    dashboard = {
        "templating": {
            "list": [
                {"name": "granularity", "type": "custom"},
                {"name": "model", "type": "query", "multi": True, "includeAll": True},
            ]
        }
    }
    assert dashboard_variables(dashboard) == {
        "granularity": Variable("granularity"),
        "model": Variable("model", multi=True, include_all=True),
    }
    assert dashboard_variables({}) == {}


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("$__timeShift(x)", "unsupported macro"),
        ("$__timeFilter()", "takes 1 argument"),
        ("$__timeFilter(a, b)", "takes 1 argument"),
        ("$__timeFrom(x)", "takes 0 argument"),
        ("$__timeGroup(bucket)", "takes"),
        ("$__timeGroup(bucket, 'often')", "not a Grafana interval"),
        ("$__timeGroup(bucket, 0s)", "at least 1s"),
        ("$__timeFilter(bucket", "unbalanced"),
        ("$__rate_interval", "unsupported global variable"),
        ("$nope", "not a variable of this dashboard"),
        ("${granularity:json}", "unsupported variable format"),
    ],
)
def test_bad_queries_are_refused(sql: str, problem: str) -> None:
    variables = {"granularity": Variable("granularity")}
    with pytest.raises(MacroError, match=problem):
        expand(sql, RANGE, variables, {"granularity": "hour"})


def test_missing_or_wrong_values_are_refused() -> None:
    variables = {"g": Variable("g")}
    with pytest.raises(MacroError, match="no value given"):
        expand("$g", RANGE, variables, {})
    with pytest.raises(MacroError, match="single-valued"):
        expand("$g", RANGE, variables, {"g": ["a", "b"]})
    with pytest.raises(MacroError, match="has no value"):
        expand("$g", RANGE, variables, {"g": []})


def test_bad_time_ranges_are_refused() -> None:
    start = datetime(2026, 11, 10, tzinfo=UTC)
    with pytest.raises(MacroError, match="empty time range"):
        TimeRange(start, start, timedelta(hours=1))
    with pytest.raises(MacroError, match="time-zone-aware"):
        TimeRange(datetime(2026, 11, 10), datetime(2026, 11, 11), timedelta(hours=1))
    with pytest.raises(MacroError, match="positive"):
        TimeRange(start, start + timedelta(hours=1), timedelta(0))


def test_intervals_and_timestamps() -> None:
    assert parse_interval("'15m'") == timedelta(minutes=15)
    assert parse_interval("100ms") == timedelta(milliseconds=100)
    assert parse_interval("2w") == timedelta(weeks=2)
    assert [format_interval(timedelta(seconds=s)) for s in (3600, 90, 86400, 1.5)] == [
        "1h",
        "90s",
        "1d",
        "1500ms",
    ]
    moment = datetime(2026, 11, 10, 8, 0, 1, 250000, tzinfo=UTC)
    assert rfc3339(moment) == "2026-11-10T08:00:01.25Z"
    assert rfc3339(moment.replace(microsecond=0)) == "2026-11-10T08:00:01Z"
