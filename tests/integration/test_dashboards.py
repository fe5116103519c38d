from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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
    connect,
    insert_rows,
    monday_window,
    refresh_all,
    rollup_conn,
    rows_as_dicts,
)
from worker.embedded.engine import EmbeddedEngine
from worker.schema.migrate import libpq_url, migrate

__all__ = ["rollup_conn"]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/datasources.yml"
READER_SQL = ROOT / "deploy/grafana/reader-role.sql"
SQL_TYPE = "grafana-postgresql-datasource"

# Demo data lives on one day of a week the rollup tests do not use, from 09:00 to 15:00.
# Panels are queried for an 8-hour range of that day (hourly buckets), and day and week
# buckets for a 24-hour range from noon: it starts inside the day and the week buckets holding
# the data, which must still show.
WINDOW = monday_window(days_ago=7, weeks=1)
DAY = WINDOW.at(days=2)
NOON_TO_NOON = TimeRange(DAY + timedelta(hours=12), DAY + timedelta(hours=36), timedelta(hours=1))
SETTINGS = {
    "hour": TimeRange(DAY + timedelta(hours=8), DAY + timedelta(hours=16), timedelta(hours=1)),
    "day": NOON_TO_NOON,
    "week": NOON_TO_NOON,
}
MODELS = ["gpt-4", "gpt-3.5-turbo", "claude-3"]
STEPS = ("parse", "chunk", "embed", "index")
HOUR = timedelta(hours=1)
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
        "input_tokens", "output_tokens", "cost_usd", "unpriced_calls", "unpriced_rate",
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
    ("pipeline-health", "Aggregation worker runs"): (
        "granularity", "last_scheduled_success", "latest_run_kind", "latest_run_status",
        "latest_run_started", "failed_runs", "buckets_synced",
    ),
    ("pipeline-health", "Synced metrics_aggregates"):
        ("granularity", "rows", "newest_bucket", "last_updated"),
}  # fmt: skip
# Empty until the database's own policy jobs have run, which the test does not wait for.
MAY_BE_NULL = {"last_run_status", "last_successful_finish", "next_start"}
COUNT_COLUMNS = {
    "traces", "calls", "tokens", "input_tokens", "output_tokens", "events", "errors", "rows",
    "failed_runs", "buckets_synced", "total_runs", "total_failures", "refresh_failures",
    "unpriced_calls",
}  # fmt: skip


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


def expected_units(column: str) -> set[str] | None:
    """The Grafana units a column of this name must be shown in (None: not checked)."""
    if column.endswith("_ms"):
        return {"ms"}
    if "cost" in column:
        return {"currencyUSD"}
    if column.endswith("rate"):
        return {"percentunit"}  # the views give rates as fractions
    if column.endswith("_seconds"):
        return {"s"}
    if column in COUNT_COLUMNS:
        return {"none", "short"}
    return None


def field_unit(panel: dict[str, Any], column: str) -> str | None:
    """The unit Grafana applies to a field: a by-name override, else the panel default."""
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"] == {"id": "byName", "options": column}:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    return str(prop["value"])
    return panel["fieldConfig"]["defaults"].get("unit")


@pytest.mark.parametrize(("stem", "dashboard", "panel", "target"), PANELS, ids=PANEL_IDS)
def test_every_latency_cost_rate_and_count_field_has_its_unit(
    stem: str, dashboard: dict[str, Any], panel: dict[str, Any], target: dict[str, Any]
) -> None:
    wrong = {
        column: field_unit(panel, column)
        for column in COLUMNS[(stem, panel["title"])]
        if (units := expected_units(column)) is not None and field_unit(panel, column) not in units
    }
    assert not wrong, f"{stem}:{panel['title']}: fields without their unit: {wrong}"


def test_worker_up_panel_reads_down_when_the_worker_has_no_target(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian package prometheus)")
    panel = next(
        p for p in load(ROOT / "dashboards/pipeline-health.json")["panels"]
        if p["title"] == "Worker up"
    )  # fmt: skip
    expr = next(t["expr"] for t in panel["targets"] if 'up{job="worker"}' in t["expr"])
    cases = [
        ('up{job="worker",instance="worker:9808"}', "1x10", 1),
        ('up{job="worker",instance="worker:9808"}', "0x10", 0),
        # the container is gone: DNS discovery finds no target, so no up series for the job
        ('up{job="prometheus",instance="localhost:9090"}', "1x10", 0),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": series, "values": values}],
            "promql_expr_test": [
                {"expr": expr, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": value}]}
            ],
        }
        for series, values, value in cases
    ]
    test_file = tmp_path / "panel_test.yml"
    test_file.write_text(yaml.safe_dump({"evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    mappings = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert mappings["0"]["text"] == "down" and mappings["1"]["text"] == "up"


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


def load_demo(conn: psycopg.Connection) -> list[int]:
    """Write the demo rows, refresh the rollups; the ids of the aggregation runs it added."""
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
    insert_rows(conn, "observability.traces", traces + failed)
    insert_rows(conn, "observability.spans", spans)
    insert_rows(conn, "observability.document_events", events)
    insert_rows(conn, "observability.metrics_aggregates", aggregates)
    runs = [
        conn.execute(
            "insert into observability.aggregation_runs (kind, granularity, range_start,"
            " range_end, done_until, status, buckets, started_at, finished_at)"
            " values ('scheduled', %s, %s, %s, %s, %s, 1, %s, %s) returning id",
            [granularity, DAY, DAY + timedelta(hours=1), DAY + timedelta(hours=1), status,
             DAY + timedelta(hours=hour), DAY + timedelta(hours=hour, minutes=1)],
        ).fetchone()[0]  # type: ignore[index]
        for granularity, status, hour in
        (("hour", "succeeded", 10), ("hour", "failed", 11), ("day", "succeeded", 12))
    ]  # fmt: skip
    refresh_all(conn, WINDOW)
    return runs


@pytest.fixture(scope="module")
def demo(rollup_conn: psycopg.Connection) -> Iterator[None]:
    clean_window(rollup_conn, WINDOW)
    runs = load_demo(rollup_conn)
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


def test_worker_runs_panel_separates_scheduled_successes_from_the_latest_run(
    rollup_conn: psycopg.Connection, demo: None
) -> None:
    dashboard = load(ROOT / "dashboards/pipeline-health.json")
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Aggregation worker runs"]
    base = datetime(2100, 1, 4, tzinfo=UTC)  # after any run another test may have recorded
    runs = [
        ("scheduled", "succeeded", 0),
        ("scheduled", "failed", 1),
        ("backfill", "interrupted", 2),
        ("backfill", "succeeded", 3),  # the newest success is a backfill
    ]
    sql = expand(panel["targets"][0]["rawSql"], TimeRange(base, base + timedelta(days=1), HOUR))
    with rollup_conn.transaction(force_rollback=True):
        for kind, status, hour in runs:
            rollup_conn.execute(
                "insert into observability.aggregation_runs (kind, granularity, range_start,"
                " range_end, done_until, status, buckets, started_at, finished_at)"
                " values (%s, 'hour', %s, %s, %s, %s, 1, %s, %s)",
                [kind, base, base + HOUR, base + HOUR, status, base + hour * HOUR,
                 base + hour * HOUR + timedelta(minutes=1)],
            )  # fmt: skip
        rows = {r["granularity"]: r for r in rows_as_dicts(rollup_conn.execute(sql.encode()))}
    hour = rows["hour"]
    assert hour["last_scheduled_success"] == base + timedelta(minutes=1)
    latest = (hour["latest_run_kind"], hour["latest_run_status"], hour["latest_run_started"])
    assert latest == ("backfill", "succeeded", base + 3 * HOUR)
    assert hour["failed_runs"] == 2  # the failed and the interrupted one
    assert hour["buckets_synced"] == 4


@pytest.fixture(scope="module")
def reader_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[psycopg.Connection, str]]:
    """A database of its own with the demo rows and the read-only role, as (superuser conn, role).

    The script revokes privileges from PUBLIC database-wide, so it gets a database of its own.
    On the engine's first start from a new data directory, GRANT and REVOKE on the database fail
    ("tuple concurrently deleted"); from the second start on they work, so it starts twice.
    """
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not on PATH (Debian package postgresql-client)")
    data_dir = tmp_path_factory.mktemp("reader") / "engine-data"
    with EmbeddedEngine(data_dir=data_dir):
        pass
    with EmbeddedEngine(data_dir=data_dir) as engine, connect(engine.url) as conn:
        for _ in migrate(engine.url):
            pass
        load_demo(conn)
        role = "dashboard_reader_test"
        command = [
            psql, libpq_url(engine.url), "-q", "-v", f"reader_user={role}",
            "-v", "reader_password=pw'1", "-f", str(READER_SQL),
        ]  # fmt: skip
        for _ in range(2):  # running it again must work: the stack runs it after every migration
            result = subprocess.run(command, capture_output=True)
            assert result.returncode == 0, result.stderr.decode()
        yield conn, role


def test_panels_run_as_the_read_only_role(reader_db: tuple[psycopg.Connection, str]) -> None:
    conn, reader_role = reader_db
    settings = conn.execute(
        "select setconfig from pg_catalog.pg_db_role_setting s"
        " join pg_catalog.pg_roles r on r.oid = s.setrole where r.rolname = %s",
        [reader_role],
    ).fetchone()
    assert settings is not None and "default_transaction_read_only=on" in settings[0]
    conn.execute(f"set role {reader_role}")
    try:
        for stem, dashboard, panel, target in PANELS:
            sql = expanded(dashboard, target, "hour")
            rows = rows_as_dicts(conn.execute(sql.encode()))
            check_rows((stem, panel["title"]), target, rows)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "update observability.traces set status = 'ok' where started_at < %s",
                [WINDOW.start],
            )
    finally:
        conn.execute("reset role")


def test_the_read_only_role_cannot_write_even_with_read_only_turned_off(
    reader_db: tuple[psycopg.Connection, str],
) -> None:
    conn, reader_role = reader_db
    conn.execute(f"set role {reader_role}")
    try:
        conn.execute("set default_transaction_read_only = off")
        for statement in (
            "create temp table reader_scratch (x int)",
            "select pg_catalog.lo_create(0)",
            "select pg_catalog.lo_creat(-1)",
            "select pg_catalog.lo_from_bytea(0, '\\x00')",
            "insert into observability.traces (trace_id) values ('x')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("select count(*) >= 0 from observability.traces").fetchone()
    finally:
        conn.execute("reset role")
    # only PUBLIC lost the privilege: the owner and superusers keep it
    conn.execute("create temp table owner_scratch (x int)")
    conn.execute("drop table owner_scratch")
