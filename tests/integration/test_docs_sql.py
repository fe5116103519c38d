from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.dashboard_macros import TimeRange, Variable, expand
from tests.docs_support import Block, blocks
from worker.schema.migrate import CONNECT_ARGS
from worker.schema.sqlfiles import split_statements

# Every ```sql block of README.md and docs/ runs against the migrated database. A block runs in
# one transaction that is rolled back, so examples that change settings (retention, say) leave
# the shared test database as it was. ```sql grafana blocks are panel queries: their macros and
# variables are expanded as Grafana would first. ```sql no-run marks a block that cannot run as
# it stands; there should hardly ever be one.

SQL_BLOCKS = blocks("sql")
RUNNABLE = [b for b in SQL_BLOCKS if "no-run" not in b.flags]
MAX_NO_RUN = 2
_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
GRAFANA_RANGE = TimeRange(_HOUR - timedelta(days=1), _HOUR, timedelta(hours=1))
GRAFANA_VARIABLES = {
    "granularity": Variable("granularity"),
    "model": Variable("model", multi=True, include_all=True),
}


def runnable_sql(block: Block, granularity: str) -> str:
    if "grafana" not in block.flags:
        return block.text
    values = {"granularity": granularity, "model": ["gpt-4o", "gpt-4o-mini"]}
    return expand(block.text, GRAFANA_RANGE, GRAFANA_VARIABLES, values)


def test_the_docs_have_sql_examples_and_few_exceptions() -> None:
    assert len(RUNNABLE) >= 10, [b.label for b in SQL_BLOCKS]
    assert len(SQL_BLOCKS) - len(RUNNABLE) <= MAX_NO_RUN


def run_block(conn: psycopg.Connection, block: Block) -> None:
    """Run every statement of the block (for each granularity, if a panel), then roll back."""
    settings = ("hour", "day", "week") if "grafana" in block.flags else ("",)
    for granularity in settings:
        statements = split_statements(runnable_sql(block, granularity))
        assert statements, f"{block.label}: an empty sql block"
        try:
            for statement in statements:
                cursor = conn.execute(statement)
                if cursor.description is not None:
                    cursor.fetchall()
        finally:
            conn.rollback()


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.label for b in RUNNABLE])
def test_sql_example_runs(migrated_database_url: str, block: Block) -> None:
    with psycopg.connect(migrated_database_url, **CONNECT_ARGS) as conn:
        try:
            run_block(conn, block)
        except psycopg.Error as exc:
            pytest.fail(f"{block.label}: {exc}")


def test_a_wrong_example_fails(migrated_database_url: str, tmp_path: Path) -> None:
    wrong = Block(tmp_path / "wrong.md", 1, "sql grafana", (
        "select bucket from observability.metrics where granularity = '$granularity';\n"
        "select p95 from observability.metrics_by_hour;"
    ))  # fmt: skip
    with (
        psycopg.connect(migrated_database_url, **CONNECT_ARGS) as conn,
        pytest.raises(psycopg.errors.UndefinedTable, match="metrics_by_hour"),
    ):
        run_block(conn, wrong)
