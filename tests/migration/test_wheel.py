from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import psycopg
import pytest

from worker.embedded.engine import EmbeddedEngine

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _site_packages(environment: Path) -> Path:
    scheme = sysconfig.get_paths(vars={"base": str(environment), "platbase": str(environment)})
    return Path(scheme["purelib"])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel built from this checkout. Its
    dependencies come from the running environment by a path entry, which (unlike a site
    directory) does not run that environment's .pth files, so the checkout's editable install
    stays out of it."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = work.glob("*.whl")
    environment = work / "venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    python = environment / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    deps = _site_packages(Path(sys.prefix))
    (_site_packages(environment) / "dependencies.pth").write_text(f"{deps}\n")
    return python


def test_the_wheel_carries_the_sql_and_the_migrations(installed: Path, tmp_path: Path) -> None:
    found = subprocess.run(
        [
            str(installed),
            "-c",
            "import worker, worker.schema.sqlfiles as s, "
            "worker.schema.migrate as m; print(worker.__file__, s.SQL_DIR, m.MIGRATIONS_DIR)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    package, sql_dir, migrations_dir = (Path(p) for p in found)
    assert not package.is_relative_to(ROOT), "the checkout leaked into the fresh environment"
    assert sql_dir.is_relative_to(package.parent) and not sql_dir.is_symlink()
    assert sorted(p.name for p in (sql_dir / "incremental").iterdir()) == sorted(
        p.name for p in (ROOT / "sql" / "incremental").iterdir()
    )
    assert (migrations_dir / "env.py").is_file()
    assert list((migrations_dir / "versions").glob("0001_*.py"))


def test_the_installed_wheel_migrates_a_database_from_any_directory(
    installed: Path, tmp_path: Path
) -> None:
    with EmbeddedEngine(data_dir=tmp_path / "data") as engine:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
        migrated = subprocess.run(
            [str(installed), "-m", "worker", "migrate", "--database-url", engine.url],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert migrated.returncode == 0, migrated.stderr
        assert "alembic revision: 0001" in migrated.stdout
        with psycopg.connect(engine.url) as conn:
            applied = conn.execute("select count(*) from observability.schema_migrations")
            row = applied.fetchone()
        assert row == (len(list((ROOT / "sql" / "incremental").iterdir())),)
