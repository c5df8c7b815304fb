"""Moved to ``morag_jobs.task.context``; these names stay importable from here."""

from morag_jobs.task.context import (
    JobContext,
    Stage,
    bind,
    get_current_job_id,
    progress_callback,
    report_progress,
    stage,
    unbind,
)

__all__ = [
    "JobContext",
    "Stage",
    "bind",
    "get_current_job_id",
    "progress_callback",
    "report_progress",
    "stage",
    "unbind",
]
