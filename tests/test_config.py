"""One place for defaults and process-wide state: ``morag_jobs._config``.

Each public entry point's default is read from its signature and compared with the one
in ``_config``, so a default written a second time somewhere fails here; ``reset()``
puts every registry back.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from morag_jobs import _config
from morag_jobs.api import create_app
from morag_jobs.cli.serve import serve
from morag_jobs.handler import ProgressHandler
from morag_jobs.reaper import DEFAULT_TIMEOUT, Reaper
from morag_jobs.stages import StagePlan, get_stage_plan, register_stage_plan
from morag_jobs.task.runtime import RuntimeConfig


def _default(function: Callable[..., Any], name: str) -> Any:
    value = inspect.signature(function).parameters[name].default
    return getattr(value, "default", value)  # typer's Annotated options keep it plainly


@pytest.mark.parametrize(("function", "name", "expected"), [
    (ProgressHandler.__init__, "interval", _config.WRITE_INTERVAL),
    (ProgressHandler.__init__, "sync_timeout", _config.SYNC_TIMEOUT),
    (ProgressHandler.__init__, "mapping_ttl", _config.MAPPING_TTL),
    (create_app, "write_interval", _config.WRITE_INTERVAL),
    (create_app, "stream_poll_interval", _config.STREAM_POLL_INTERVAL),
    (serve, "write_interval", _config.WRITE_INTERVAL),
    (Reaper.__init__, "timeout", _config.REAP_TIMEOUT),
], ids=lambda value: getattr(value, "__qualname__", str(value)))
def test_each_default_is_the_one_in_config(
    function: Callable[..., Any], name: str, expected: float
) -> None:
    assert _default(function, name) == expected


def test_the_worker_runtime_takes_its_defaults_from_config() -> None:
    config = RuntimeConfig()
    assert config.interval == _config.WRITE_INTERVAL
    assert config.heartbeat_interval == _config.HEARTBEAT_INTERVAL
    assert DEFAULT_TIMEOUT == _config.REAP_TIMEOUT


def test_reset_forgets_the_registered_stage_plans() -> None:
    plan = StagePlan({"download": (0, 50), "index": (50, 100)})
    register_stage_plan("config-test", plan)
    assert get_stage_plan("config-test") is plan
    assert _config.stage_plans["config-test"] is plan, "the registry lives in _config"
    calls: list[str] = []
    _config.on_reset(lambda: calls.append("layer above"))
    _config.reset()
    assert get_stage_plan("config-test") is None
    assert calls == ["layer above"], "what a layer above registered is reset too"
