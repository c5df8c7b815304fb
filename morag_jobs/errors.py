"""The exceptions morag-jobs raises.

::

    MoragJobsError
     ├── InvalidProgress        a percentage that is NaN, infinite or negative
     ├── PatternPackError       a parser pattern pack that cannot be loaded
     ├── JobNotFound            a job id that the job table does not hold
     ├── JobExists              a new job whose id the job table already holds
     ├── ConcurrencyConflict    an update that lost the race to other writers too often
     ├── NoJobContext           report_progress() called outside a job
     ├── StoreUnavailable       the job database could not be reached
     └── WebhookURLRefused      a webhook URL that is not http(s), or a host that is not public
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class MoragJobsError(Exception):
    """Base class of every error morag-jobs raises on purpose."""


class InvalidProgress(MoragJobsError, ValueError):
    """A progress value that breaks the rules of job state."""

    def __init__(self, value: Any, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"invalid progress {value!r}: {reason}")


class PatternPackError(MoragJobsError):
    """A pattern pack (``parsers/*.toml``) that cannot be used; names the file and pattern."""

    def __init__(self, path: Path | str, reason: str, pattern: str | None = None) -> None:
        self.path = str(path)
        self.pattern = pattern
        self.reason = reason
        where = f"{self.path} [{pattern}]" if pattern else self.path
        super().__init__(f"pattern pack {where}: {reason}")


class JobNotFound(MoragJobsError, LookupError):
    """No job with this id exists in the job table."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class JobExists(MoragJobsError, ValueError):
    """A job with this id is already in the job table; ids are never reused."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"a job with id {job_id!r} already exists; pass another id or none")


class ConcurrencyConflict(MoragJobsError, RuntimeError):
    """Other writers changed the job between every read and write; nothing was written."""

    def __init__(self, job_id: str, attempts: int) -> None:
        self.job_id = job_id
        self.attempts = attempts
        super().__init__(
            f"job {job_id!r} changed under every one of {attempts} update attempts; "
            "retry later or allow more attempts"
        )


class NoJobContext(MoragJobsError, RuntimeError):
    """Progress was reported outside a job, so there is no job to attach it to."""


class StoreUnavailable(MoragJobsError):
    """The job database could not be reached; the URL shown has its password masked."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"job database {url} unreachable: {reason}")


class WebhookURLRefused(MoragJobsError, ValueError):
    """A webhook URL the delivery policy refuses; ``reason`` states the rule it breaks."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"webhook URL {url!r} refused: {reason}")


RETRYABLE = (StoreUnavailable, ConcurrencyConflict)
"""What a write may be retried after: the store translates every driver error into
``StoreUnavailable`` at its boundary, so nothing above it knows SQLAlchemy."""


def brief(error: BaseException) -> str:
    """The first line of an error: no SQL and no parameters (user data) in logs."""
    if isinstance(error, StoreUnavailable):
        return error.reason  # already the driver's first line, password masked
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class JobCancelled(BaseException):
    """Raised inside a task by its next progress call once its job was ended elsewhere.

    A ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` in the task's
    own code does not swallow it, so the task stops at its next ``report_progress``,
    ``progress_callback`` call or ``stage`` boundary. The worker plugin turns it into a
    REVOKED task (not a FAILURE); the job keeps the percentage it reached.
    """

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} {reason}")
        self.job_id = job_id
        self.reason = reason
