from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.schema.server_check import (
    MINIMUM_TIMESCALEDB,
    PROJECT_JOBS,
    ServerFacts,
    evaluate,
    parse_version,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
SERVICES = {
    "db", "redis", "migrate", "grafana-reader", "worker", "beat", "ingest", "prometheus", "grafana",
}  # fmt: skip
# An exact pg17 build of the HA image (the one with timescaledb_toolkit), e.g. pg17.11-ts2.30.1
EXACT_PG17 = re.compile(r"^timescale/timescaledb-ha:pg17\.\d+-ts(\d+\.\d+\.\d+)$")


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def compose_command() -> list[str]:
    if (tool := shutil.which("docker-compose")) is not None:
        return [tool]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    pytest.skip("no compose tool on PATH (Debian package docker-compose)")


def run_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment, so that only the env file supplies the stack's variables.
    return subprocess.run(
        [*compose_command(), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_file), "config"],
        capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
    )  # fmt: skip


@cache
def resolved() -> dict[str, Any]:
    result = run_config(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def volume_source(volume: str | dict[str, Any]) -> str:
    """Short syntax (docker-compose v1 prints it) or long syntax (docker compose v2)."""
    return volume["source"] if isinstance(volume, dict) else volume.split(":")[0]


def test_compose_accepts_the_file_with_the_example_env() -> None:
    config = resolved()
    assert set(config["services"]) == SERVICES
    env = env_example()
    db = config["services"]["db"]
    assert db["environment"]["POSTGRES_PASSWORD"] == env["POSTGRES_PASSWORD"]
    assert (
        config["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
        == (env["GRAFANA_ADMIN_PASSWORD"])
    )


@pytest.mark.parametrize(
    "secret",
    ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_DB_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
     "OBSERVABILITY_INGEST_TOKEN"],
)  # fmt: skip
def test_a_missing_secret_is_refused_by_name(tmp_path: Path, secret: str) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env_example().items() if k != secret))
    result = run_config(env_file)
    assert result.returncode != 0
    assert f"set {secret}" in result.stderr


def test_secrets_come_from_the_environment_only() -> None:
    text = COMPOSE_FILE.read_text()
    env = env_example()
    for name, value in env.items():
        assert f"${{{name}" in text, f"{name} in .env.example is not used by docker-compose.yml"
        if "PASSWORD" in name or "TOKEN" in name:
            assert value not in text, f"the value of {name} is written into docker-compose.yml"
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    assert used <= set(env), f"variables missing from .env.example: {sorted(used - set(env))}"


def test_exactly_one_beat() -> None:
    services = resolved()["services"]
    beats = [name for name, s in services.items() if "beat" in command_of(s)]
    assert beats == ["beat"]
    assert "scale" not in services["beat"] and "replicas" not in services["beat"].get("deploy", {})
    workers = [name for name, s in services.items() if command_of(s)[3:4] == ["worker"]]
    assert workers == ["worker"]


def test_images_are_pinned() -> None:
    services = resolved()["services"]
    assert EXACT_PG17.match(services["db"]["image"]), services["db"]["image"]
    assert services["grafana-reader"]["image"] == services["db"]["image"]
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d", tag) and "latest" not in tag, (name, image)


def test_named_volumes_and_existing_bind_mounts() -> None:
    config = resolved()
    named = set(config["volumes"])
    for service in ("db", "redis", "prometheus", "grafana", "beat"):
        sources = [volume_source(v) for v in config["services"][service].get("volumes", [])]
        assert any(s in named for s in sources), f"{service} keeps no data in a named volume"
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            source = volume_source(volume)
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts missing {source}"


def test_redis_keeps_its_queue_and_long_running_services_restart() -> None:
    services = resolved()["services"]
    redis_command = " ".join(command_of(services["redis"]))
    # Unacknowledged tasks live in Redis: the append-only file keeps them across a restart, so
    # a task in flight when Redis died is handed out again instead of lost.
    assert "--appendonly yes" in redis_command
    assert any(volume_source(v) == "redis-data" for v in services["redis"]["volumes"])
    one_shot = {"migrate", "grafana-reader"}
    for name, service in services.items():
        expected = "no" if name in one_shot else "unless-stopped"
        assert service.get("restart") == expected, (name, service.get("restart"))


def test_health_checks_and_start_order() -> None:
    services = resolved()["services"]
    for name in ("db", "redis", "worker", "ingest", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("worker", "beat", "ingest", "grafana-reader"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert services["grafana"]["depends_on"]["grafana-reader"]["condition"] == (
        "service_completed_successfully"
    )
    assert "PROMETHEUS_MULTIPROC_DIR" in services["worker"]["environment"]


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout


def test_prometheus_scrapes_the_worker_and_loads_the_alerts() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]  # /etc/prometheus/alerts.yml in the container
    (worker,) = [job for job in config["scrape_configs"] if job["job_name"] == "worker"]
    (lookup,) = worker["dns_sd_configs"]
    assert (lookup["names"], lookup["port"]) == (["worker"], 9808)
    prometheus = resolved()["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_the_image_has_what_it_needs_at_run_time() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "worker/cli/main.py",
        "sql/head.sql",
        "worker/schema/sql/head.sql",
        "worker/schema/migrations/env.py",
        "migrations/env.py",
        "alembic.ini",
        "pyproject.toml",
    ]
    for path in needed:
        assert (ROOT / path).exists(), path
        excluded = [p for p in patterns if fnmatch.fnmatch(path, p) or path.startswith(p + "/")]
        assert not excluded, f"{path} is excluded from the build context by {excluded}"
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "pip install --no-deps /src" in dockerfile


def published_ports(service: dict[str, Any]) -> set[int]:
    """Container ports, from the short syntax (docker-compose v1) or the long one (v2)."""
    ports = set()
    for port in service.get("ports", []):
        target = port["target"] if isinstance(port, dict) else port.split(":")[-1].split("/")[0]
        ports.add(int(target))
    return ports


def test_ingest_serves_otlp_http_and_grpc() -> None:
    from worker.cli.main import build_parser

    ingest = resolved()["services"]["ingest"]
    command = command_of(ingest)
    assert command[:4] == ["python", "-m", "worker", "ingest"]
    args = build_parser().parse_args(command[3:])
    assert (args.port, args.grpc_port) == (4318, 4317)
    assert published_ports(ingest) == {4318, 4317}
    health = " ".join(ingest["healthcheck"]["test"])
    assert "4318" in health and "4317" in health
    assert "EXPOSE 9808 4318 4317" in (ROOT / "deploy/Dockerfile").read_text()


def _db_settings() -> dict[str, str]:
    command = command_of(resolved()["services"]["db"])
    assert command[0] == "postgres", command
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "-c"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_database_is_a_timescaledb_migrate_accepts() -> None:
    match = EXACT_PG17.match(resolved()["services"]["db"]["image"])
    assert match is not None
    assert parse_version(match.group(1)) >= MINIMUM_TIMESCALEDB


def test_the_worker_budget_fits_the_jobs_with_room() -> None:
    settings = _db_settings()
    background = int(settings["timescaledb.max_background_workers"])
    processes = int(settings["max_worker_processes"])
    parallel = int(settings["max_parallel_workers"])
    # The project's jobs, TimescaleDB's own two and two schedulers, with room to spare.
    needed = PROJECT_JOBS + 2 + 2
    assert background >= needed * 1.5, (background, needed)
    facts = ServerFacts(
        postgres_version="17",
        timescaledb_version="2.23.1",
        timescaledb_installed=True,
        license="timescale",
        max_background_workers=background,
        max_worker_processes=processes,
        max_parallel_workers=parallel,
        launcher_running=True,
        schedulers=4,
        all_jobs=PROJECT_JOBS + 2,
    )
    assert evaluate(facts) == []
    text = COMPOSE_FILE.read_text()
    assert f"One install starts {PROJECT_JOBS} jobs" in text  # the comment says why


def test_stateless_services_scale_and_beat_does_not() -> None:
    services = resolved()["services"]
    for name in ("worker", "ingest"):
        assert int(services[name]["deploy"]["replicas"]) == 1, name
    assert "deploy" not in services["beat"]
    assert "deploy" not in services["migrate"]


def test_replicas_and_a_port_range_are_accepted(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    values = {**env_example(), "INGEST_REPLICAS": "2", "WORKER_REPLICAS": "3"}
    values["INGEST_PORT"] = "4318-4319"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = run_config(env_file)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert int(services["ingest"]["deploy"]["replicas"]) == 2
    assert int(services["worker"]["deploy"]["replicas"]) == 3
    assert "4318-4319" in str(services["ingest"]["ports"])
