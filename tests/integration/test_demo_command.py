from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_demo(data_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout


def test_demo_installs_once_and_reuses_its_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "engine-data"
    first = run_demo(data_dir)
    assert "applied 001-timescaledb.sql" in first
    assert "percentile sketch: the project's own" in first
    assert "observability.traces_hourly" in first
    second = run_demo(data_dir)
    assert "schema up to date: no new incremental files" in second
    assert "applied 001-timescaledb.sql" not in second
