from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.browser_support import drawn_fraction, open_page
from tests.factories.observability_factory import (
    create_chat_message,
    create_completed_trace,
    create_document_event,
    create_llm_span,
)
from worker.demo.workload import MARKER
from worker.embedded.engine import EmbeddedEngine
from worker.ingest import write_batch
from worker.schema.migrate import migrate

# The user's own rows: everything in the raw tables and the plain tables the demo never writes.
_SNAPSHOT = {
    "traces": f"select * from observability.traces where not attributes ? '{MARKER}'"
    " order by trace_id",
    "spans": "select * from observability.spans where trace_id in (select trace_id from"
    f" observability.traces where not attributes ? '{MARKER}') order by span_id",
    "chat_messages": "select * from observability.chat_messages where trace_id in (select"
    f" trace_id from observability.traces where not attributes ? '{MARKER}') order by id",
    "document_events": "select * from observability.document_events"
    f" where not coalesce(attributes, '{{}}') ? '{MARKER}' order by id",
    "provider_sync_status": "select * from observability.provider_sync_status order by 1",
    "user_table": "select * from public.user_notes order by id",
}


@dataclass(frozen=True)
class DemoRun:
    url: str
    out: Path
    result: subprocess.CompletedProcess[str]
    before: dict[str, list[dict[str, Any]]]


def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return {name: conn.execute(query).fetchall() for name, query in _SNAPSHOT.items()}


def run_demo(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "worker", "demo", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**environment, **(env or {})},
    )


def _user_rows(url: str) -> None:
    """What a user's own server holds before the demo: its own traces inside the demo's week,
    and a table of its own outside the schema."""
    now = datetime.now(UTC).replace(microsecond=0)
    traces, spans, messages, events = [], [], [], []
    for hours_ago in (3, 30, 100):
        at = now - timedelta(hours=hours_ago)
        trace = create_completed_trace(started_at=at, attributes={"service.name": "user-app"})
        traces.append(trace)
        spans.append(
            create_llm_span(trace_id=trace["trace_id"], started_at=at, model="gpt-4o-mini")
        )
        messages.append(create_chat_message(trace_id=trace["trace_id"], created_at=at))
        events.append(create_document_event(created_at=at, attributes={"source": "user"}))
    with psycopg.connect(url, autocommit=True) as conn:
        result = write_batch(
            conn, traces=traces, spans=spans, chat_messages=messages, document_events=events
        )
        assert not result.rejected, result.rejected
        conn.execute("create table public.user_notes (id int primary key, note text)")
        conn.execute("insert into public.user_notes values (1, 'mine'), (2, 'also mine')")
        conn.execute(
            "insert into observability.provider_sync_status (provider_name, status)"
            " values ('user-provider', 'synced')"
        )


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded engine started on its own, as a user's TimescaleDB server would be."""
    with EmbeddedEngine(data_dir=tmp_path_factory.mktemp("own-server")) as engine:
        migrate(engine.url)
        _user_rows(engine.url)
        yield engine.url


@pytest.fixture(scope="module")
def demo_run(own_server: str, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo-out")
    before = snapshot(own_server)
    result = run_demo(
        "--database-url",
        own_server,
        "--out",
        out,
        "--traces-per-hour",
        "3",
        "--no-progress",
        cwd=out,
    )
    return DemoRun(own_server, out, result, before)


def test_demo_loads_into_a_users_database_and_leaves_its_rows_alone(demo_run: DemoRun) -> None:
    result = demo_run.result
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"demo rows are marked with the attribute {MARKER}" in out
    assert "embedded engine: " not in out
    assert "schema up to date" in out  # migrated first; nothing was missing
    assert "generated " in out
    assert "late-arriving rows:" in out
    assert "engine data" not in out
    # nothing of the embedded engine's was started or kept
    assert not (demo_run.out / ".demo").exists()

    after = snapshot(demo_run.url)
    assert after == demo_run.before
    assert len(after["traces"]) == 3 and len(after["document_events"]) == 3
    with psycopg.connect(demo_run.url, autocommit=True) as conn:
        demo = conn.execute(
            f"select count(*) from observability.traces where attributes ? '{MARKER}'"
        ).fetchone()
        synced = conn.execute(
            "select count(*) from observability.metrics_aggregates where granularity = 'week'"
        ).fetchone()
    assert demo is not None and 3 * 168 * 0.7 < demo[0] < 3 * 168 * 1.3
    assert synced is not None and synced[0] > 0

    html = (demo_run.out / "dashboard.html").read_text()
    assert "data:image/png;base64,iVBORw0KGgo" in html
    assert "<h2>by model (LLM calls)</h2>" in html


def test_demo_reads_database_url_and_reuses_its_rows(demo_run: DemoRun, tmp_path: Path) -> None:
    assert demo_run.result.returncode == 0, demo_run.result.stderr
    again = run_demo(
        "--out", tmp_path, "--no-progress", cwd=tmp_path, env={"DATABASE_URL": demo_run.url}
    )
    assert again.returncode == 0, again.stderr
    assert "reusing the workload already in database postgresql://" in again.stdout
    assert "to regenerate it, delete the demo's rows" in again.stdout
    assert "generated " not in again.stdout
    assert (tmp_path / "dashboard.png").is_file()
    assert snapshot(demo_run.url) == demo_run.before


def test_fresh_is_refused_with_a_database_url(own_server: str, tmp_path: Path) -> None:
    before = snapshot(own_server)
    result = run_demo("--database-url", own_server, "--fresh", cwd=tmp_path)
    assert result.returncode == 1
    assert "--fresh wipes the embedded engine's data directory" in result.stderr
    assert snapshot(own_server) == before
    assert not (tmp_path / ".demo").exists()


def test_an_unreachable_database_is_said(tmp_path: Path) -> None:
    result = run_demo("--database-url", "postgresql://nobody@127.0.0.1:1/none", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr


def test_the_dashboard_page_loads_in_a_browser(demo_run: DemoRun) -> None:
    assert demo_run.result.returncode == 0, demo_run.result.stderr
    screenshot = demo_run.out / "browser.png"
    report = open_page(demo_run.out / "dashboard.html", screenshot)
    assert report.ready_state == "complete"
    assert report.title.startswith("LLM/RAG observability demo")
    assert report.failed_requests == []
    assert report.console_errors == []
    (picture,) = report.images
    assert picture.complete
    assert (picture.natural_width, picture.natural_height) == _png_size(demo_run.out)
    assert picture.shown_width > 1000  # laid out across the page, not collapsed
    titles = [table.title for table in report.tables]
    assert titles[:3] == [
        "by model (LLM calls)",
        "by operation (traces)",
        "by knowledge base (traces)",
    ]
    assert len(report.tables) == 5
    for table in report.tables:
        assert table.columns >= 5 and table.rows >= 1, table
    # the picture (charts with coloured lines and bars) is what the browser drew
    assert drawn_fraction(screenshot) > 0.05


def _png_size(out: Path) -> tuple[int, int]:
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out / "dashboard.png").shape
    return width, height
