from __future__ import annotations

from pathlib import Path

from worker.schema.sqlfiles import discover

RELEASED = Path(__file__).with_name("released-incremental.sha256")


def _released() -> dict[str, str]:
    lines = RELEASED.read_text().splitlines()
    pairs = (line.split() for line in lines if line.strip() and not line.startswith("#"))
    return {name: digest for name, digest in pairs}


def test_released_incremental_files_never_change() -> None:
    files = {f.name: f for f in discover().incremental}
    released = _released()
    next_number = max(f.number for f in files.values()) + 1
    for name, digest in released.items():
        assert name in files, (
            f"sql/incremental/{name} was released and is gone. Released files stay: databases "
            "have applied them, and the installer refuses to run without them."
        )
        assert files[name].sha256 == digest, (
            f"sql/incremental/{name} changed after it was released. Revert the edit and put the "
            f"change in a new file, sql/incremental/{next_number:03d}-<what-it-does>.sql: "
            "databases that applied the old text would never see the new one."
        )


def test_every_incremental_file_is_recorded() -> None:
    released = _released()
    missing = [f for f in discover().incremental if f.name not in released]
    assert not missing, f"record new incremental files in {RELEASED.name}; add: " + "; ".join(
        f"{f.name} {f.sha256}" for f in missing
    )
