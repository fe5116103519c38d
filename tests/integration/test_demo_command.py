from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import matplotlib.image
import psycopg

from worker.demo.workload import MODELS, OPERATIONS
from worker.embedded.engine import EmbeddedEngine

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[2]
# Without DATABASE_URL the demo starts the embedded engine, which these tests are about.
EMBEDDED_ENV = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}


def run_demo(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "demo", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=EMBEDDED_ENV,
    )


def run_make_demo(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`make demo`, the README's command, with a small workload."""
    return subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_ARGS={' '.join(map(str, args))}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=EMBEDDED_ENV,
    )


def test_demo_generates_aggregates_reports_then_reuses_its_data(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "engine-data", tmp_path / "out"
    options = ["--data-dir", data_dir, "--out", out, "--traces-per-hour", "4", "--seed", "5"]
    first = run_make_demo(*options)
    assert first.returncode == 0, first.stderr
    summary = first.stdout
    assert "applied 001-timescaledb.sql" in summary
    assert "generated " in summary
    assert "generating" in first.stderr  # the progress bar
    for model in MODELS:
        assert f"  {model.name} " in summary
    for operation in OPERATIONS:
        assert f"  {operation} " in summary
    assert "late-arriving rows:" in summary
    assert "picked up by the scheduled hourly run" in summary
    assert str(out / "dashboard.png") in summary

    png = out / "dashboard.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = matplotlib.image.imread(png).shape
    assert width >= 1200 and height >= 1200
    html = (out / "dashboard.html").read_text()
    assert "data:image/png;base64,iVBORw0KGgo" in html
    assert "<h2>by model (LLM calls)</h2>" in html

    second = run_demo(*options[:4], "--traces-per-hour", "9", "--seed", "6")
    assert second.returncode == 0, second.stderr
    assert "reusing the workload already in" in second.stdout
    assert "(seed 5, 4 traces per hour; --fresh regenerates it)" in second.stdout
    assert "NOTE: --seed 6 and --traces-per-hour 9 ignored" in second.stdout
    assert "generated " not in second.stdout
    assert "generating" not in second.stderr
    assert "late-arriving rows" not in second.stdout
    for model in MODELS:
        assert f"  {model.name} " in second.stdout

    with (
        EmbeddedEngine(data_dir=data_dir) as engine,
        psycopg.connect(engine.url, autocommit=True) as conn,
    ):
        rows = dict(
            conn.execute(
                "select granularity, count(*) from observability.metrics_aggregates group by 1"
            ).fetchall()
        )
        traces = conn.execute("select count(*) from observability.traces").fetchone()
        scheduled = conn.execute(
            "select range_start, range_end, status from observability.aggregation_runs"
            " where kind = 'scheduled'"
        ).fetchall()
        late = conn.execute(
            "select min(started_at), max(started_at), count(*) from observability.traces"
            " where attributes ? 'demo.late'"
        ).fetchone()
        # every hour the scheduled run synced counts the late rows too
        synced = conn.execute(
            "select count(*) from observability.metrics_aggregates as a"
            " join observability.aggregation_runs as r on r.kind = 'scheduled'"
            "  and a.bucket_time >= r.range_start and a.bucket_time < r.range_end"
            " where a.granularity = 'hour' and a.metric_type = 'trace.errors'"
            "  and a.dimension_type = 'overall' and a.count = (select count(*)"
            "   from observability.traces as t where t.started_at >= a.bucket_time"
            "   and t.started_at < a.bucket_time + interval '1 hour')"
        ).fetchone()
        # As an interrupted first run leaves it: the last day was never written.
        conn.execute(
            "delete from observability.traces where started_at > "
            "(select max(started_at) from observability.traces) - interval '1 day'"
        )
    # the late rows went into the last two complete hours, which the scheduled hourly run (as
    # beat sends it, no window given) synced once more
    assert len(scheduled) == 1
    ((run_start, run_end, status),) = scheduled
    assert status == "succeeded" and run_end - run_start == timedelta(hours=2)
    assert late is not None and late[2] > 0
    assert run_start <= late[0] and late[1] < run_end
    assert synced == (2,)
    assert set(rows) == {"hour", "day", "week"}
    assert all(count > 0 for count in rows.values())
    assert traces is not None and 4 * 168 * 0.8 < traces[0] < 4 * 168 * 1.2

    incomplete = run_demo(*options)
    assert incomplete.returncode == 1
    assert "is incomplete" in incomplete.stderr
    assert "run again with --fresh" in incomplete.stderr

    third = run_demo(*options[:4], "--traces-per-hour", "2", "--fresh", "--no-progress")
    assert third.returncode == 0, third.stderr
    assert f"wiped {data_dir}" in third.stdout
    assert "generated " in third.stdout
    assert "applied 001-timescaledb.sql" in third.stdout
    assert "generating" not in third.stderr


def test_fresh_refuses_a_directory_that_is_not_an_engines(tmp_path: Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    result = run_demo("--data-dir", tmp_path, "--out", tmp_path / "out", "--fresh")
    assert result.returncode == 1
    assert "is not an engine data directory" in result.stderr
    assert keep.read_text() == "mine"
    assert not (tmp_path / "out").exists()


def test_a_traffic_rate_that_is_not_positive_is_refused(tmp_path: Path) -> None:
    for rate in ("0", "-3", "lots"):
        result = run_demo("--data-dir", tmp_path / "d", "--traces-per-hour", rate)
        assert result.returncode == 2
        assert "--traces-per-hour" in result.stderr
        assert not (tmp_path / "d").exists()
