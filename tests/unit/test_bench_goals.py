from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import bench.__main__ as bench_main
import bench.common
from bench.common import Goal, GroupResult, Options
from bench.rollups import Comparison


def _group(*goals: Goal, ok: bool = True) -> GroupResult:
    return GroupResult({"target": "none"}, "a report", ok, goals)


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(
        bench_main,
        "write_results",
        lambda group, payload: bench.common.write_results(group, payload, tmp_path),
    )
    return tmp_path


def _with_groups(monkeypatch: pytest.MonkeyPatch, **groups: GroupResult) -> None:
    def runner(result: GroupResult) -> Callable[[Options], GroupResult]:
        def run(opts: Options) -> GroupResult:
            assert opts.database_url == "postgresql://db.example/bench"
            return result

        return run

    monkeypatch.setattr(bench_main, "GROUPS", {k: runner(v) for k, v in groups.items()})


MET = Goal("views vs raw", 120.0, ">=", 100)
MISSED = Goal("weekly from daily vs raw", 31.5, ">=", 50)
URL = ["--database-url", "postgresql://db.example/bench"]


def test_goals_compare_in_the_direction_they_name() -> None:
    assert Goal("a", 2.0, "<=", 2).met and not Goal("a", 2.01, "<=", 2).met
    assert Goal("b", 0.5, ">=", 0.5, "").met and not Goal("b", 0.49, ">=", 0.5, "").met
    assert not Goal("not measured", None, ">=", 1).met
    assert Goal("c", 0.2, "<=", 5, "%").measured() == "0.20%"


def test_a_percentage_comparison_becomes_a_goal_in_percent() -> None:
    goal = Comparison("one new hour vs full", 0.05, 10.0, "<= 5%").as_goal()
    assert (goal.value, goal.op, goal.target, goal.unit) == (0.5, "<=", 5.0, "%")
    assert goal.met
    slow = Comparison("weekly from daily vs raw", 1.0, 20.0, ">= 50x").as_goal()
    assert (slow.value, slow.met) == (20.0, False)


def test_check_exits_non_zero_when_a_goal_is_missed(
    monkeypatch: pytest.MonkeyPatch, results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _with_groups(monkeypatch, rollups=_group(MET, MISSED))
    assert bench_main.main([*URL, "--check"]) == 2
    out = capsys.readouterr().out
    assert "MISSED" in out and "met" in out and "1 of 2 goals met" in out
    written = json.loads((results_dir / "rollups.json").read_text())
    assert [g["met"] for g in written["goals"]] == [True, False]
    # without --check a missed goal is reported, not a failure
    assert bench_main.main(URL) == 0


def test_check_exits_zero_when_every_goal_is_met(
    monkeypatch: pytest.MonkeyPatch, results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _with_groups(monkeypatch, rollups=_group(MET), worker=_group(Goal("x", 1.1, "<=", 2)))
    assert bench_main.main([*URL, "--check"]) == 0
    assert "2 of 2 goals met" in capsys.readouterr().out


def test_a_failed_group_exits_one_whatever_the_goals(
    monkeypatch: pytest.MonkeyPatch, results_dir: Path
) -> None:
    _with_groups(monkeypatch, worker=_group(MET, ok=False))
    assert bench_main.main([*URL, "--check"]) == 1
    assert bench_main.main(URL) == 1


def test_a_group_that_crashes_fails_the_run_and_the_others_still_report(
    monkeypatch: pytest.MonkeyPatch, results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(opts: Options) -> GroupResult:
        raise RuntimeError("the endpoint refused a batch")

    _with_groups(monkeypatch, rollups=_group(MET))
    monkeypatch.setitem(bench_main.GROUPS, "otlp", broken)
    assert bench_main.main(URL) == 1
    out = capsys.readouterr().out
    assert "group otlp failed" in out and "1 of 1 goals met" in out
