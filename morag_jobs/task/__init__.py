"""What runs inside any task: progress calls, stages, the log tap, commands, the runtime.

Framework-neutral: an adapter (``morag_jobs.celery``) binds a job context around each
task; task code reports with ``report_progress``, ``progress_callback``, ``with stage``,
logging (the log tap) or ``run_with_progress``, and the process's runtime writes it.
Code that is not a task reports inside ``with job_context(job_id):``.
"""

from morag_jobs.errors import JobCancelled
from morag_jobs.task.commands import CommandFailed, run_with_progress
from morag_jobs.task.context import (
    JobContext,
    Stage,
    current,
    get_current_job_id,
    is_cancelled,
    progress_callback,
    report_progress,
    stage,
)
from morag_jobs.task.logtap import LogTap, ProgressLogHandler, progress_processor
from morag_jobs.task.runtime import (
    Runtime,
    RuntimeConfig,
    default_runtime,
    job_context,
    set_default_runtime,
)

__all__ = [
    "CommandFailed",
    "JobCancelled",
    "JobContext",
    "LogTap",
    "ProgressLogHandler",
    "Runtime",
    "RuntimeConfig",
    "Stage",
    "current",
    "default_runtime",
    "get_current_job_id",
    "is_cancelled",
    "job_context",
    "progress_callback",
    "progress_processor",
    "report_progress",
    "run_with_progress",
    "set_default_runtime",
    "stage",
]
