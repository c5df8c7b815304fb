"""docker-compose.yml: the deployment file must be valid (no Docker engine is needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests import services

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_passes() -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("no docker compose client here (.ci/run installs docker-compose)")
    result = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for service in ("redis:", "postgres:", "migrate:", "worker:", "api:"):
        assert service in result.stdout, f"service {service} missing from the resolved config"
    assert "service_healthy" in result.stdout, "services wait for healthy dependencies"


def test_the_image_installs_what_the_services_run() -> None:
    """The services run a worker (celery), the server (api), PostgreSQL and the command
    line: the image's extras must hold all four (``all`` does)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    installed = re.search(r'pip install --no-cache-dir "\.\[([a-z,]+)\]"', dockerfile)
    assert installed is not None, "the image installs the project with its extras"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = set(installed.group(1).split(","))
    for name in list(names):  # an extra may name others: morag-jobs[celery,api,...]
        for requirement in extras.get(name, []):
            included = re.fullmatch(r"morag-jobs\[([a-z,]+)\]", requirement)
            names |= set(included.group(1).split(",")) if included else set()
    assert {"celery", "api", "postgres", "cli"} <= names, f"the image lacks extras: {names}"
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "morag_jobs.demo" in compose and "morag-jobs" in compose


def test_the_suite_uses_a_redis_server_of_its_own() -> None:
    """The machine's Redis is shared: the tests run on their own server, and delete only
    the keys they created even there (no FLUSHDB, no FLUSHALL anywhere in tests/)."""
    calls = [path.name for path in (ROOT / "tests").glob("*.py")
             if re.search(r"\.flush(db|all)\(", path.read_text(), re.IGNORECASE)]
    assert calls == [], f"tests that empty a Redis database: {calls}"
    own = getattr(services, "_OWN", None)
    if own is None:
        pytest.skip("MORAG_TEST_REDIS_URL names the server (its owner chose it), or no "
                    "redis-server binary to start one")
    assert services.REDIS_URL.startswith(own) and not own.endswith(":6379")
    assert os.environ["MORAG_TEST_CELERY_BROKER_URL"].startswith(own)
