from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.celery_support import ROOT, TEST_REDIS
from worker.scheduling.beat_lock import BEAT_LOCK_KEY

LOCK_TTL = 3


@pytest.fixture
def beats(tmp_path: Path, celery_broker: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    redis.Redis.from_url(TEST_REDIS).delete(BEAT_LOCK_KEY)
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def start_beat(tmp_path: Path, name: str, started: list[subprocess.Popen[bytes]]) -> Path:
    log = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "CELERY_BROKER_URL": TEST_REDIS,
        "OBSERVABILITY_BEAT_LOCK_TTL": str(LOCK_TTL),
    }
    with log.open("wb") as out:
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.scheduling.app", "beat",
                 "--loglevel=INFO", f"--schedule={tmp_path / name}-schedule"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )  # fmt: skip
    return log


def wait_for_text(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, path.read_text(errors="replace")
        time.sleep(0.2)


def wait_for_lock(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the beat holds the lock (it takes it once its scheduler is starting)."""
    deadline = time.monotonic() + timeout
    while (current := holder()) is None or current.split(":")[1] != str(process.pid):
        assert time.monotonic() < deadline and process.poll() is None, current
        time.sleep(0.1)


def holder() -> str | None:
    value = redis.Redis.from_url(TEST_REDIS).get(BEAT_LOCK_KEY)
    return value.decode() if value else None


def test_a_second_beat_refuses_to_start(tmp_path: Path, beats: list) -> None:
    first_log = start_beat(tmp_path, "first", beats)
    wait_for_text(first_log, "beat: Starting...")
    wait_for_lock(beats[0])
    first_holder = holder()

    second_log = start_beat(tmp_path, "second", beats)
    assert beats[1].wait(60) != 0
    assert "another beat is running" in second_log.read_text()
    assert beats[0].poll() is None and holder() == first_holder
    time.sleep(LOCK_TTL + 1)  # the running beat keeps renewing its lock
    assert holder() == first_holder


def test_the_lock_is_released_on_shutdown_and_expires_after_a_crash(
    tmp_path: Path, beats: list
) -> None:
    start_beat(tmp_path, "first", beats)
    wait_for_lock(beats[0])
    os.killpg(beats[0].pid, signal.SIGTERM)
    assert beats[0].wait(30) == 0
    assert holder() is None  # a clean stop lets the next beat start at once

    start_beat(tmp_path, "second", beats)
    wait_for_lock(beats[1])
    os.killpg(beats[1].pid, signal.SIGKILL)  # a crash: the lock stays until it expires
    beats[1].wait(10)
    assert holder() is not None
    time.sleep(LOCK_TTL + 0.5)
    third_log = start_beat(tmp_path, "third", beats)
    wait_for_text(third_log, "beat: Starting...")
    wait_for_lock(beats[2])
