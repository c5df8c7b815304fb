"""morag-jobs: real job progress for Celery workers.

Progress from task callbacks, log lines and remote workers becomes ``ProgressEvent``
objects; one ``ProgressHandler`` turns them into the state of a durable job table.

Names load on first use (PEP 562), so ``from morag_jobs import ProgressEventParser``
does not load the database or the web stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from morag_jobs.errors import (
    ConcurrencyConflict,
    InvalidProgress,
    JobCancelled,
    JobExists,
    JobNotFound,
    MoragJobsError,
    NoJobContext,
    PatternPackError,
    StoreUnavailable,
    WebhookURLRefused,
)
from morag_jobs.events import ProgressEvent

if TYPE_CHECKING:
    from morag_jobs.follow import FollowerStats, LogFollower
    from morag_jobs.handler import ProgressHandler
    from morag_jobs.outcomes import ApplyResult, HandlerStats
    from morag_jobs.parser import ParserStats, ProgressEventParser
    from morag_jobs.stages import StagePlan, get_stage_plan, register_stage_plan
    from morag_jobs.store import HistoryEntry, Job, JobEventRecord, JobStatus, JobStore
    from morag_jobs.streams import ProgressStream, StreamStats

    __version__: str

_LAZY = {
    "ApplyResult": "outcomes",
    "FollowerStats": "follow",
    "HandlerStats": "outcomes",
    "HistoryEntry": "store",
    "Job": "store",
    "JobEventRecord": "store",
    "JobStatus": "store",
    "JobStore": "store",
    "LogFollower": "follow",
    "ParserStats": "parser",
    "ProgressEventParser": "parser",
    "ProgressHandler": "handler",
    "ProgressStream": "streams",
    "StagePlan": "stages",
    "StreamStats": "streams",
    "get_stage_plan": "stages",
    "register_stage_plan": "stages",
}
"""Each public name that loads on first use, and the submodule that owns it."""

__all__ = [
    "ApplyResult",
    "ConcurrencyConflict",
    "FollowerStats",
    "HandlerStats",
    "HistoryEntry",
    "InvalidProgress",
    "Job",
    "JobCancelled",
    "JobEventRecord",
    "JobExists",
    "JobNotFound",
    "JobStatus",
    "JobStore",
    "LogFollower",
    "MoragJobsError",
    "NoJobContext",
    "ParserStats",
    "PatternPackError",
    "ProgressEvent",
    "ProgressEventParser",
    "ProgressHandler",
    "ProgressStream",
    "StagePlan",
    "StoreUnavailable",
    "StreamStats",
    "WebhookURLRefused",
    "__version__",
    "get_stage_plan",
    "register_stage_plan",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 (slow import)

    try:
        return version("morag-jobs")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(import_module(f"morag_jobs.{_LAZY[name]}"), name)
    else:
        raise AttributeError(f"module 'morag_jobs' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
