"""The Celery worker plugin: progress callbacks in tasks, the log tap, the job lifecycle.

::

    from morag_jobs.celery import install, submit, report_progress, progress_callback, stage

    app = Celery("ingest", broker="redis://127.0.0.1:6379/0")
    install(app, database_url="postgresql+psycopg://...", stage_plans={
        "audio": {"download": (0, 10), "processing": (10, 70), "indexing": (70, 100)}})

    @app.task
    def transcribe(path):
        report_progress(stage="download", percent=100)
        transcribe_file(path, on_progress=progress_callback(stage="processing"))

    job = submit(transcribe, ("talk.mp3",), job_type="audio", user_id="u1")
"""

from morag_jobs._extras import require

require("morag_jobs.celery", "celery", "kombu")

from morag_jobs.celery.commands import CommandFailed, run_with_progress
from morag_jobs.celery.context import (
    JobContext,
    Stage,
    get_current_job_id,
    progress_callback,
    report_progress,
    stage,
)
from morag_jobs.celery.logtap import LogTap, ProgressLogHandler, progress_processor
from morag_jobs.celery.plugin import JOB_HEADER, install, submit
from morag_jobs.celery.runtime import Runtime, RuntimeConfig, default_runtime, job_context

__all__ = [
    "JOB_HEADER",
    "CommandFailed",
    "JobContext",
    "LogTap",
    "ProgressLogHandler",
    "Runtime",
    "RuntimeConfig",
    "Stage",
    "default_runtime",
    "get_current_job_id",
    "install",
    "job_context",
    "progress_callback",
    "progress_processor",
    "report_progress",
    "run_with_progress",
    "stage",
    "submit",
]
