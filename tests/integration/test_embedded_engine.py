from __future__ import annotations

from pathlib import Path

import psycopg

from worker.embedded.engine import EmbeddedEngine


def test_data_dir_persists_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "engine-data"
    with EmbeddedEngine(data_dir=data_dir) as engine:
        assert engine.port > 0
        with psycopg.connect(engine.url, autocommit=True) as conn:
            conn.execute("create table kept (id int primary key)")
            conn.execute("insert into kept values (1), (2)")
    assert engine.process is not None and engine.process.returncode == 0
    assert "--- engine start" in (data_dir / "engine.log").read_text()

    with (
        EmbeddedEngine(data_dir=data_dir) as engine,
        psycopg.connect(engine.url, autocommit=True) as conn,
    ):
        assert conn.execute("select count(*) from kept").fetchone() == (2,)
        row = conn.execute(
            "select extversion from pg_extension where extname = 'timescaledb'"
        ).fetchone()
        assert row is not None
    assert (data_dir / "engine.log").read_text().count("--- engine start") == 2


def test_an_engine_object_can_be_restarted() -> None:
    engine = EmbeddedEngine()
    for _ in range(2):
        with engine, psycopg.connect(engine.url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert not engine.running
    assert engine.stop() == 0
