"""Every default morag-jobs uses, its process-wide registries, and ``reset()`` for tests.

One place, in the spirit of structlog's ``_config``: a default written once here is the
same for the handler, the worker runtime, the API and the command line, and a test (or a
long-lived process that reconfigures) can put every registry back with one call.
``morag_jobs.settings`` stays the one reader of the environment; this module holds what
the code decides when nothing is configured.

It sits low in the import order (errors → _config → events, stages → ...): it imports
nothing of the package at run time, so every layer may read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from morag_jobs.stages import StagePlan

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MAPPING_TTL",
    "MAX_LEASE",
    "REAP_TIMEOUT",
    "STREAM_POLL_INTERVAL",
    "SYNC_TIMEOUT",
    "WRITE_INTERVAL",
    "on_reset",
    "reset",
    "stage_plans",
]

WRITE_INTERVAL = 0.5
"""Seconds between two writes of one job: progress in between is coalesced, latest wins."""
STREAM_POLL_INTERVAL = 0.5
"""Seconds between two reads of the job table for the API's event streams."""
SYNC_TIMEOUT = 30.0
"""Seconds a write that must land now (a completion) is retried before it is queued."""
MAPPING_TTL = 2.0
"""Seconds a task/worker → job lookup is trusted before it is read again."""
HEARTBEAT_INTERVAL = 10.0
"""Seconds between two heartbeats of a worker's running jobs."""
REAP_TIMEOUT = 120.0
"""Seconds without a heartbeat after which a running job is reaped."""
MAX_LEASE = 366 * 86400.0
"""The longest lease a remote job may have (a year): longer is "none"."""

stage_plans: dict[str, StagePlan] = {}
"""The stage plans registered per job type (``morag_jobs.stages.register_stage_plan``)."""

_resets: list[Callable[[], None]] = []


def on_reset(callback: Callable[[], None]) -> None:
    """Have ``reset()`` call ``callback`` too: a layer above registers its own state."""
    if callback not in _resets:
        _resets.append(callback)


def reset() -> None:
    """Forget every registered stage plan and whatever the layers above registered."""
    stage_plans.clear()
    for callback in _resets:
        callback()
