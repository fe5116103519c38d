from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import yaml

from tests.dashboard_macros import TimeRange, dashboard_variables, expand
from tests.factories import (
    create_document_event,
    create_failed_trace,
    create_llm_spans_for_aggregation,
    create_metrics_aggregate,
    create_traces_for_aggregation,
)
from tests.rollup_support import (
    clean_window,
    insert_rows,
    monday_window,
    refresh_all,
    rollup_conn,
    rows_as_dicts,
)
from worker.migrate import libpq_url

__all__ = ["rollup_conn"]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/datasources.yml"
READER_SQL = ROOT / "deploy/grafana/reader-role.sql"
SQL_TYPE = "grafana-postgresql-datasource"

# Demo data lives on one day of a week the rollup tests do not use; panels are queried for
# an 8-hour range of that day (hourly buckets) and for the whole week (day and week buckets).
WINDOW = monday_window(days_ago=7, weeks=1)
DAY = WINDOW.at(days=2)
SETTINGS = {
    "hour": TimeRange(DAY + timedelta(hours=8), DAY + timedelta(hours=16), timedelta(hours=1)),
    "day": TimeRange(WINDOW.start, WINDOW.end, timedelta(days=1)),
    "week": TimeRange(WINDOW.start, WINDOW.end, timedelta(days=1)),
}
MODELS = ["gpt-4", "gpt-3.5-turbo", "claude-3"]
STEPS = ("parse", "chunk", "embed", "index")
# Columns every panel query returns, by dashboard file and panel title. Time series start with
# "time". A new panel needs an entry here.
COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("llm-overview", "Totals over the range"):
        ("traces", "error_rate", "p95_latency_ms", "tokens", "llm_cost_usd"),
    ("llm-overview", "LLM call latency p95 by model"): ("time", "model", "p95"),
    ("llm-overview", "LLM call latency percentiles (all models)"): ("time", "p50", "p95", "p99"),
    ("llm-overview", "Trace latency p95 by operation"): ("time", "operation_type", "p95"),
    ("llm-overview", "Time to first token p95 by model"): ("time", "model", "p95"),
    ("llm-overview", "Tokens by model"): ("time", "model", "input_tokens", "output_tokens"),
    ("llm-overview", "LLM cost by model (USD)"): ("time", "model", "cost_usd"),
    ("llm-overview", "Error rate"): ("time", "source", "error_rate"),
    ("llm-overview", "LLM error rate by model"): ("time", "model", "error_rate"),
    ("llm-overview", "Models over the range"): (
        "model", "calls", "error_rate", "p50_ms", "p95_ms", "p99_ms", "ttft_p95_ms",
        "input_tokens", "output_tokens", "cost_usd",
    ),
    ("knowledge-bases-and-users", "Knowledge bases"):
        ("knowledge_base", "traces", "error_rate", "p50_ms", "p95_ms", "tokens", "cost_usd"),
    ("knowledge-bases-and-users", "Users"):
        ("user_id", "traces", "error_rate", "p50_ms", "p95_ms", "tokens", "cost_usd"),
    ("knowledge-bases-and-users", "Operations"):
        ("operation_type", "traces", "error_rate", "p50_ms", "p95_ms", "tokens", "cost_usd"),
    ("knowledge-bases-and-users", "Traces by operation"): ("time", "operation_type", "traces"),
    ("document-processing", "Step duration p95"): ("time", "step", "p95"),
    ("document-processing", "Events by step"): ("time", "step", "events"),
    ("document-processing", "Step error rate"): ("time", "step", "error_rate"),
    ("document-processing", "Steps over the range"): (
        "step", "events", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms", "max_ms",
    ),
    ("pipeline-health", "Hourly rollup lag"): ("lag_seconds", "refresh_failures"),
    ("pipeline-health", "Rollup freshness"): (
        "rollup", "granularity", "watermark", "lag_seconds", "last_run_status",
        "last_successful_finish", "next_start", "total_runs", "total_failures",
    ),
    ("pipeline-health", "Aggregation worker runs"):
        ("granularity", "last_success", "last_status", "failed_runs", "buckets_synced"),
    ("pipeline-health", "Synced metrics_aggregates"):
        ("granularity", "rows", "newest_bucket", "last_updated"),
}  # fmt: skip
# Empty until the database's own policy jobs have run, which the test does not wait for.
MAY_BE_NULL = {"last_run_status", "last_successful_finish", "next_start"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def provisioned() -> dict[str, str]:
    """Datasource uid -> type, from the Grafana provisioning file."""
    config = yaml.safe_load(DATASOURCES.read_text())
    return {d["uid"]: d["type"] for d in config["datasources"]}


def sql_panels() -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    found = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == SQL_TYPE:
                    found.append((path.stem, dashboard, panel, target))
    return found


PANELS = sql_panels()
PANEL_IDS = [f"{stem}:{panel['title']}" for stem, _, panel, _ in PANELS]


def expanded(dashboard: dict[str, Any], target: dict[str, Any], setting: str) -> str:
    values = {"granularity": setting, "model": MODELS}
    return expand(target["rawSql"], SETTINGS[setting], dashboard_variables(dashboard), values)


def test_there_are_dashboards_and_every_panel_has_expected_columns() -> None:
    assert {p.stem for p in DASHBOARDS} == {stem for stem, _ in COLUMNS}
    assert sorted(PANEL_IDS) == sorted(f"{stem}:{title}" for stem, title in COLUMNS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_structure(path: Path) -> None:
    dashboard = load(path)
    sources = provisioned()
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"].startswith("LLM observability")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for panel in dashboard["panels"]:
        where = f"{path.name} panel {panel['id']} {panel['title']!r}"
        assert panel["targets"], where
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, where
        for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert sources.get(ref["uid"]) == ref["type"], where
        for target in panel["targets"]:
            if target["datasource"]["type"] == SQL_TYPE:
                assert target["format"] in ("time_series", "table"), where
                assert target["rawQuery"] is True and target["rawSql"].strip(), where
            else:
                assert target["expr"].strip(), where
    for variable in dashboard_variables(dashboard):
        assert variable in {"granularity", "model"}, f"{path.name}: no test value for {variable}"
    for item in dashboard.get("templating", {}).get("list", []):
        if "datasource" in item:
            assert sources.get(item["datasource"]["uid"]) == item["datasource"]["type"]


def test_dashboard_uids_and_titles_are_unique() -> None:
    dashboards = [load(p) for p in DASHBOARDS]
    assert (
        len({d["uid"] for d in dashboards})
        == len({d["title"] for d in dashboards})
        == len(dashboards)
    )


def test_prometheus_queries_parse(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian package prometheus)")
    rules = []
    for path in DASHBOARDS:
        for panel in load(path)["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == "prometheus":
                    expr = target["expr"].replace("$__rate_interval", "1m")
                    rules.append({"record": f"dashboard:panel_{len(rules)}", "expr": expr})
    assert rules, "no Prometheus panels"
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def _placed(rows: list[dict[str, Any]], column: str, start: datetime, step: timedelta) -> None:
    """Move each row (and its end, if any) to start + i * step, keeping its duration."""
    for i, row in enumerate(rows):
        shift = start + i * step - row[column]
        row[column] += shift
        if row.get("ended_at") is not None:
            row["ended_at"] += shift


@pytest.fixture(scope="module")
def demo(rollup_conn: psycopg.Connection) -> Iterator[None]:
    clean_window(rollup_conn, WINDOW)
    random.seed(7)
    start, six_hours = DAY + timedelta(hours=9), timedelta(hours=6)
    traces = []
    for n, operation in enumerate(("chat", "search", "generation")):
        for kb in range(3):
            rows = create_traces_for_aggregation(
                count=6,
                operation_type=operation,
                time_range_hours=6,
                user_id=UUID(int=n + 1),
                kb_id=UUID(int=100 + kb),
            )
            _placed(rows, "started_at", start + timedelta(minutes=7 * kb), six_hours / 6)
            traces += rows
    failed = [create_failed_trace(kb_id=UUID(int=100), user_id=UUID(int=1)) for _ in range(4)]
    _placed(failed, "started_at", start, six_hours / 4)
    spans = []
    for model in MODELS:
        rows = create_llm_spans_for_aggregation(count=12, model=model)
        rows[0].update(status="error", error_type="RateLimitError")
        _placed(rows, "started_at", start + timedelta(minutes=3), six_hours / 12)
        spans += rows
    events = [
        create_document_event(
            created_at=start + timedelta(minutes=20 * i),
            event_type=STEPS[i % len(STEPS)],
            status="error" if i % 7 == 0 else "ok",
        )
        for i in range(18)
    ]
    aggregates = [
        create_metrics_aggregate(bucket_time=DAY + timedelta(hours=h), granularity="hour")
        for h in range(9, 15)
    ] + [create_metrics_aggregate(bucket_time=DAY, granularity="day")]
    insert_rows(rollup_conn, "observability.traces", traces + failed)
    insert_rows(rollup_conn, "observability.spans", spans)
    insert_rows(rollup_conn, "observability.document_events", events)
    insert_rows(rollup_conn, "observability.metrics_aggregates", aggregates)
    runs = [
        rollup_conn.execute(
            "insert into observability.aggregation_runs (kind, granularity, range_start,"
            " range_end, done_until, status, buckets, started_at, finished_at)"
            " values ('scheduled', %s, %s, %s, %s, %s, 1, %s, %s) returning id",
            [granularity, DAY, DAY + timedelta(hours=1), DAY + timedelta(hours=1), status,
             DAY + timedelta(hours=hour), DAY + timedelta(hours=hour, minutes=1)],
        ).fetchone()[0]  # type: ignore[index]
        for granularity, status, hour in
        (("hour", "succeeded", 10), ("hour", "failed", 11), ("day", "succeeded", 12))
    ]  # fmt: skip
    refresh_all(rollup_conn, WINDOW)
    yield
    rollup_conn.execute("delete from observability.aggregation_runs where id = any(%s)", [runs])
    rollup_conn.execute(
        "delete from observability.metrics_aggregates where bucket_time >= %s and bucket_time < %s",
        [WINDOW.start, WINDOW.end],
    )
    clean_window(rollup_conn, WINDOW)


def check_rows(key: tuple[str, str], target: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    assert rows, f"{key}: no rows"
    assert tuple(rows[0]) == COLUMNS[key]
    if target["format"] == "time_series":
        assert all(isinstance(row["time"], datetime) for row in rows), key
        assert [row["time"] for row in rows] == sorted(row["time"] for row in rows), key
    empty = [c for c in COLUMNS[key] if c not in MAY_BE_NULL and all(r[c] is None for r in rows)]
    assert not empty, f"{key}: columns without any value: {empty}"


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize(("stem", "dashboard", "panel", "target"), PANELS, ids=PANEL_IDS)
def test_panel_query_returns_rows(
    rollup_conn: psycopg.Connection,
    demo: None,
    stem: str,
    dashboard: dict[str, Any],
    panel: dict[str, Any],
    target: dict[str, Any],
    setting: str,
) -> None:
    sql = expanded(dashboard, target, setting)
    rows = rows_as_dicts(rollup_conn.execute(sql.encode()))
    check_rows((stem, panel["title"]), target, rows)


def test_model_variable_query_lists_the_models(rollup_conn: psycopg.Connection, demo: None) -> None:
    dashboard = load(ROOT / "dashboards/llm-overview.json")
    (model,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
    sql = expand(model["query"], SETTINGS["hour"])
    assert [row[0] for row in rollup_conn.execute(sql.encode())] == sorted(MODELS)


@pytest.fixture
def reader_role(rollup_conn: psycopg.Connection, migrated_database_url: str) -> Iterator[str]:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not on PATH (Debian package postgresql-client)")
    role = "dashboard_reader_test"
    command = [
        psql,
        libpq_url(migrated_database_url),
        "-q",
        "-v",
        f"reader_user={role}",
        "-v",
        "reader_password=pw'1",
    ]
    for _ in range(2):  # running it again must work: the stack runs it after every migration
        result = subprocess.run([*command, "-f", str(READER_SQL)], capture_output=True)
        assert result.returncode == 0, result.stderr.decode()
    try:
        yield role
    finally:
        rollup_conn.execute("reset role")
        rollup_conn.execute(f"drop owned by {role}")
        rollup_conn.execute(f"drop role {role}")


def test_panels_run_as_the_read_only_role(
    rollup_conn: psycopg.Connection, demo: None, reader_role: str
) -> None:
    settings = rollup_conn.execute(
        "select setconfig from pg_catalog.pg_db_role_setting s"
        " join pg_catalog.pg_roles r on r.oid = s.setrole where r.rolname = %s",
        [reader_role],
    ).fetchone()
    assert settings is not None and "default_transaction_read_only=on" in settings[0]
    rollup_conn.execute(f"set role {reader_role}")
    try:
        for stem, dashboard, panel, target in PANELS:
            sql = expanded(dashboard, target, "hour")
            rows = rows_as_dicts(rollup_conn.execute(sql.encode()))
            check_rows((stem, panel["title"]), target, rows)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            rollup_conn.execute(
                "update observability.traces set status = 'ok' where started_at < %s",
                [WINDOW.start],
            )
    finally:
        rollup_conn.execute("reset role")
