"""The Celery adapter: the job lifecycle from Celery's signals, ``install`` and ``submit``.

What runs inside a task (``report_progress``, ``progress_callback``, ``stage``, the log
tap, ``run_with_progress``, ``job_context``) lives in ``morag_jobs.task`` and is
re-exported here, so Celery users import everything from one place.

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

from morag_jobs.celery.plugin import install
from morag_jobs.celery.runtime import Runtime, RuntimeConfig
from morag_jobs.celery.sending import JOB_HEADER, JOB_TYPE_HEADER, SubmittedJob, submit
from morag_jobs.task import (
    CommandFailed,
    JobCancelled,
    JobContext,
    LogTap,
    ProgressLogHandler,
    Stage,
    default_runtime,
    get_current_job_id,
    is_cancelled,
    job_context,
    progress_callback,
    progress_processor,
    report_progress,
    run_with_progress,
    stage,
)

__all__ = [
    "JOB_HEADER",
    "JOB_TYPE_HEADER",
    "CommandFailed",
    "JobCancelled",
    "JobContext",
    "LogTap",
    "ProgressLogHandler",
    "Runtime",
    "RuntimeConfig",
    "Stage",
    "SubmittedJob",
    "default_runtime",
    "get_current_job_id",
    "install",
    "is_cancelled",
    "job_context",
    "progress_callback",
    "progress_processor",
    "report_progress",
    "run_with_progress",
    "stage",
    "submit",
]
