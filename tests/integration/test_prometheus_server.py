from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import urlopen

import psycopg
import pytest

from tests.aggregation_support import insert_traces, place
from tests.celery_support import ROOT, CeleryWorker, free_port
from tests.factories import create_traces_for_aggregation
from worker.scheduling.app import app as celery_app
from worker.scheduling.tasks import AGGREGATE_TASK, BACKFILL_TASK

aggregate_task = celery_app.tasks[AGGREGATE_TASK]
backfill_task = celery_app.tasks[BACKFILL_TASK]

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not on PATH (Debian package prometheus; make test installs it)")
    return path


def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(
        [_tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout


def test_alert_rules_fire_on_stale_rollups_failures_and_no_recent_success() -> None:
    result = subprocess.run(
        [_tool("promtool"), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.fixture
def prometheus(tmp_path: Path, celery_worker: CeleryWorker) -> Iterator[str]:
    binary = _tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "worker",
                        "static_configs": [
                            {"targets": [f"127.0.0.1:{celery_worker.metrics_port}"]}
                        ],
                    }
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _api(base: str, path: str, **params: str) -> Any:
    with urlopen(f"{base}{path}?{urlencode(params)}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def _query_until(base: str, query: str, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = _api(base, "/api/v1/query", query=query)["result"]
            if result:
                return result
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus returned nothing for {query} in {timeout} s")
        time.sleep(0.5)


def test_prometheus_scrapes_the_worker(
    prometheus: str, celery_worker: CeleryWorker, agg_conn: psycopg.Connection
) -> None:
    # a scheduled run (the latest complete hours), the kind whose success the gauge records
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    traces = place(create_traces_for_aggregation(count=6), start, timedelta(minutes=7))
    insert_traces(agg_conn, traces)
    ran_at = time.time()
    summary = aggregate_task.apply_async(args=("hour",)).get(timeout=180)
    assert summary["records_processed"] > 0

    up = _query_until(prometheus, 'up{job="worker"} == 1')
    assert len(up) == 1
    success = _query_until(
        prometheus, f'observability_aggregation_last_success{{granularity="hour"}} >= {ran_at}'
    )
    assert float(success[0]["value"][1]) <= time.time()
    processed = _query_until(
        prometheus, 'observability_aggregation_records_processed_total{granularity="hour"}'
    )
    assert float(processed[0]["value"][1]) >= summary["records_processed"]
    runs = _query_until(
        prometheus,
        'sum(observability_aggregation_duration_seconds_count{outcome="success"})',
    )
    assert float(runs[0]["value"][1]) >= 1
    # freshness of the rollup this run materialized; never-materialized ones have no lag yet
    rollup = 'rollup="observability.traces_hourly"'
    lag = _query_until(prometheus, f"observability_rollup_lag_seconds{{{rollup}}}")
    assert 0 <= float(lag[0]["value"][1]) < 40 * 86400
    assert _query_until(prometheus, f"observability_rollup_unmaterialized_seconds{{{rollup}}}")
    assert _query_until(prometheus, "observability_database_up == 1")

    # the alert rules are loaded and evaluate without errors against the live series
    deadline = time.monotonic() + 30
    while True:
        groups = _api(prometheus, "/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = all(r.get("lastEvaluation", "0001").startswith("20") for r in rules)
        if len(rules) == 13 and evaluated:
            break
        assert time.monotonic() < deadline, groups
        time.sleep(0.5)
    assert {g["name"] for g in groups} == {"observability-rollups", "observability-worker"}
    assert all(rule["health"] == "ok" for rule in rules), rules
