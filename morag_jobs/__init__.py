"""morag-jobs: real job progress for Celery workers.

Progress from task callbacks, log lines and remote workers becomes ``ProgressEvent``
objects; one ``ProgressHandler`` turns them into the state of a durable job table.
"""

from importlib.metadata import PackageNotFoundError, version

from morag_jobs.errors import (
    InvalidProgress,
    JobNotFound,
    MoragJobsError,
    NoJobContext,
    PatternPackError,
    StoreUnavailable,
)
from morag_jobs.events import ProgressEvent
from morag_jobs.parser import ParserStats, ProgressEventParser

try:
    __version__ = version("morag-jobs")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"

__all__ = [
    "InvalidProgress",
    "JobNotFound",
    "MoragJobsError",
    "NoJobContext",
    "ParserStats",
    "PatternPackError",
    "ProgressEvent",
    "ProgressEventParser",
    "StoreUnavailable",
    "__version__",
]
