from __future__ import annotations

import pytest

from tests.database import select_backend


def _docker(answer: bool):
    calls: list[bool] = []

    def ping() -> bool:
        calls.append(answer)
        return answer

    return ping, calls


def test_database_url_wins_without_asking_docker() -> None:
    ping, calls = _docker(True)
    assert select_backend({"TEST_DATABASE_URL": "postgresql://x/y"}, ping) == "env"
    assert calls == []


def test_the_workers_database_url_is_never_used_for_tests() -> None:
    # DATABASE_URL is what the worker and CLI use, often a real database: the suite would empty
    # its tables and drop its schema.
    ping, _ = _docker(False)
    assert select_backend({"DATABASE_URL": "postgresql://prod/observability"}, ping) == "embedded"


@pytest.mark.parametrize(("docker_up", "expected"), [(True, "testcontainers"), (False, "embedded")])
def test_docker_decides_between_container_and_embedded(docker_up: bool, expected: str) -> None:
    ping, _ = _docker(docker_up)
    assert select_backend({}, ping) == expected


def test_forced_backend() -> None:
    ping, calls = _docker(True)
    assert select_backend({"OBS_TEST_BACKEND": "embedded"}, ping) == "embedded"
    assert calls == []
    with pytest.raises(ValueError, match="OBS_TEST_BACKEND"):
        select_backend({"OBS_TEST_BACKEND": "sqlite"}, ping)
