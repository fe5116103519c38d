from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.cli.status import render as render_status
from worker.monitoring.health import JobStatus, RollupHealth, RollupStatus, SketchStatus
from worker.schema.sqlfiles import discover
from worker.schema.sqltemplate import SKETCH_SCHEMA, TemplateError, render, render_for

SKETCH_FUNCTIONS = ("percentile_agg", "rollup", "approx_percentile_array", "approx_percentile")
# The project's own sketch: its definition, and faster bodies for some of its functions.
FALLBACK_FILES = {"008-percentile-sketch.sql", "012-sketch-speed.sql"}


def _files() -> list[Any]:
    layout = discover()
    return [f for f in (*layout.incremental, *layout.idempotent) if f.name not in FALLBACK_FILES]


def _calls(text: str, schema: str) -> set[str]:
    pattern = rf"\b{schema}\.({'|'.join(SKETCH_FUNCTIONS)})\s*\("
    return {m[1] for m in re.finditer(pattern, re.sub(r"--[^\n]*", "", text))}


@pytest.mark.parametrize("schema", ["public", "toolkit_schema", "observability"])
def test_sketch_calls_follow_the_recorded_schema(schema: str) -> None:
    """Where the toolkit is installed (in public, usually) every rollup, view and function
    calls its percentile_agg, rollup and approx_percentile_array, and none of the fallback's."""
    used: set[str] = set()
    for sql_file in _files():
        rendered = render(sql_file.text, schema)
        assert SKETCH_SCHEMA not in rendered
        used |= _calls(rendered, schema)
        if schema != "observability":
            assert _calls(rendered, "observability") == set(), sql_file.label
    assert used == {"percentile_agg", "rollup", "approx_percentile_array"}


def test_only_the_rollups_and_views_use_the_placeholder() -> None:
    users = {f.name for f in _files() if SKETCH_SCHEMA in f.text}
    assert users == {
        "010-trace-rollups.sql",
        "011-llm-span-rollups.sql",
        "012-document-event-rollups.sql",
        "003-rollup-views.sql",
        "007-dashboard-views.sql",
    }


def test_render_refuses_odd_schema_names() -> None:
    with pytest.raises(TemplateError):
        render("select @sketch_schema@.rollup(x)", "public; drop table x")


class _NoSketchRecorded:
    def execute(self, query: str, params: Any = None) -> Any:
        class _Result:
            def fetchone(self) -> tuple[bool]:
                return (False,)

        return _Result()


def test_placeholder_before_the_choice_is_an_error() -> None:
    assert render_for(_NoSketchRecorded(), "select 1") == "select 1"  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="009-percentile-sketch-choice"):
        render_for(_NoSketchRecorded(), "select @sketch_schema@.rollup(x)")  # type: ignore[arg-type]


def test_status_rendering() -> None:
    now = datetime(2026, 1, 5, 10, 7, tzinfo=UTC)
    health = RollupHealth(
        checked_at=now,
        sketch=SketchStatus("observability", "observability"),
        rollups=[
            RollupStatus(
                name="observability.traces_hourly",
                source="observability.traces",
                bucket_width="01:00:00",
                real_time=True,
                newest_bucket=now.replace(hour=9, minute=0),
                watermark=now.replace(hour=10, minute=0),
                lag=timedelta(minutes=7),
            ),
            RollupStatus(
                name="observability.traces_daily",
                source="observability.traces_hourly",
                bucket_width="1 day",
                real_time=True,
                newest_bucket=None,
                watermark=None,
                lag=None,
            ),
        ],
        jobs=[
            JobStatus(
                job_id=1000,
                kind="refresh",
                target="observability.traces_hourly",
                scheduled=True,
                schedule_interval=timedelta(minutes=5),
                config={"start_offset": "3 days", "end_offset": "00:00:00"},
                last_run_status="Failed",
                last_run_started_at=now,
                last_successful_finish=None,
                next_start=now + timedelta(minutes=5),
                total_runs=3,
                total_failures=1,
                last_error="canceling statement due to a concurrent refresh",
            )
        ],
    )
    text = "\n".join(render_status(health))
    assert "the project's own" in text
    assert "7m" in text and "not materialized" in text
    assert "window 3 days .. 00:00:00 ago" in text
    assert "job 1000 last failed with: canceling statement" in text
