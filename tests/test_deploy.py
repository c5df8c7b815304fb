"""docker-compose.yml: the deployment file must be valid (no Docker engine is needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir ".[postgres]"' in dockerfile
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "morag_jobs.demo" in compose and "morag-jobs" in compose
