"""docker-compose.yml and the Dockerfile: valid Compose, and the very commands of the Procfile.

Docker cannot run in the test environment; the file is checked against the Compose
specification's JSON schema (tests/fixtures/compose-spec.json, as shipped in the
docker-compose 1.29.2 package, Apache-2.0) and for the properties the service relies on.
`docker compose config` is run too where the Compose plugin is installed.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parent / "fixtures" / "compose-spec.json"
INFRA = {"postgres", "redis"}
PROCFILE_SERVICES = {"web", "worker", "beat", "sandbox"}
# What the containers bind instead of the Procfile's loopback defaults.
CONTAINER_VALUES = {"WEB_BIND": "0.0.0.0:8000", "SANDBOX_HOST": "0.0.0.0"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _python_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in services.items() if name not in INFRA}


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def _in_container(command: str) -> str:
    def value(match: re.Match[str]) -> str:
        return CONTAINER_VALUES.get(match.group(1), match.group(0))

    return re.sub(r"\$\{(\w+):-[^}]*\}", value, command).strip()


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)


def test_python_services_share_one_image_built_from_the_dockerfile(services: dict) -> None:
    python = _python_services(services)
    assert set(python) == PROCFILE_SERVICES | {"prepare"}
    assert {spec.get("build") for spec in python.values()} == {"."}
    assert len({spec.get("image") for spec in python.values()}) == 1
    for name in INFRA:
        assert "image" in services[name]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")


def test_commands_are_the_procfile_lines(services: dict) -> None:
    for name, command in _procfile().items():
        assert services[name]["command"] == _in_container(command), name
    assert "--bind 0.0.0.0:8000" in services["web"]["command"]


def test_redis_keeps_every_queued_task(services: dict) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_services_wait_for_healthy_dependencies(services: dict) -> None:
    for name in ("postgres", "redis", "web", "sandbox"):
        assert services[name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    healthy = {name for name, spec in services.items() if "healthcheck" in spec}
    for name, spec in services.items():
        for dependency, rule in spec.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            if rule["condition"] == "service_healthy":
                assert dependency in healthy, (name, dependency)
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["prepare"]["condition"] == "service_completed_successfully"
    assert "migrate" in services["prepare"]["command"]
    assert "alipay_keys" in services["prepare"]["command"]


def test_python_services_reach_postgres_redis_and_the_sandbox(services: dict) -> None:
    for name, spec in _python_services(services).items():
        env = spec["environment"]
        assert env["DATABASE_URL"].startswith("postgres://"), name
        assert "@postgres:5432/" in env["DATABASE_URL"], name
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0", name
        assert "sandbox:8090/gateway.do" in env["ALIPAY_GATEWAY"], name
        assert env["ALIPAY_NOTIFY_URL"] == "http://web:8000/payment/alipay/notify/", name
        assert env["DJANGO_DEBUG"] == "false", name


def test_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert lines[[line.startswith("FROM") for line in lines].index(True)] == (
        "FROM python:3.11-slim")
    assert "RUN pip install ." in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var", "keys/*.pem"} <= set(ignored)


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return result.returncode == 0


def test_docker_compose_config_accepts_the_file() -> None:
    if not _compose_plugin():
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
