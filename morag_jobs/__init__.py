"""morag-jobs: real job progress for Celery workers.

Progress from task callbacks, log lines and remote workers becomes ``ProgressEvent``
objects; one ``ProgressHandler`` turns them into the state of a durable job table.
"""

from importlib.metadata import PackageNotFoundError, version

from morag_jobs.errors import (
    ConcurrencyConflict,
    InvalidProgress,
    JobExists,
    JobNotFound,
    MoragJobsError,
    NoJobContext,
    PatternPackError,
    StoreUnavailable,
    WebhookURLRefused,
)
from morag_jobs.events import ProgressEvent
from morag_jobs.follow import FollowerStats, LogFollower
from morag_jobs.handler import ApplyResult, HandlerStats, ProgressHandler
from morag_jobs.parser import ParserStats, ProgressEventParser
from morag_jobs.stages import StagePlan, get_stage_plan, register_stage_plan
from morag_jobs.store import Job, JobEventRecord, JobStatus, JobStore
from morag_jobs.streams import ProgressStream, StreamStats

try:
    __version__ = version("morag-jobs")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"

__all__ = [
    "ApplyResult",
    "ConcurrencyConflict",
    "FollowerStats",
    "HandlerStats",
    "InvalidProgress",
    "Job",
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
