"""The Celery app that ``morag-jobs demo`` runs: one task per source of progress.

The demo's worker process imports this module (``celery -A morag_jobs.demo.tasks worker``),
so the app is configured from the environment the demo sets: ``MORAG_DEMO_DIR`` for
the embedded broker (kombu's filesystem transport) or ``MORAG_DEMO_BROKER``, and
``MORAG_DATABASE_URL`` for the job table.
"""

from __future__ import annotations

import sys
import tempfile
import time

from celery import Celery
from celery.utils.log import get_task_logger

from morag_jobs import settings
from morag_jobs.celery import install, progress_callback, report_progress, run_with_progress, stage
from morag_jobs.celery.embedded import embedded_settings

__all__ = ["app", "convert", "ingest_logs", "transcribe"]

POLLING_INTERVAL = 0.1  # seconds, on the embedded broker
AUDIO_PLAN = {"download": (0, 10), "transcription": (10, 80), "indexing": (80, 100)}
TQDM_SCRIPT = """
import sys, time
from tqdm import tqdm
for _ in tqdm(range(40), desc="Converting", file=sys.stderr, mininterval=0, ascii=True):
    time.sleep({pause})
"""

app = Celery("morag_jobs.demo.tasks")
_directory = settings.demo_directory() or tempfile.mkdtemp(prefix="morag-demo-")
app.conf.update(embedded_settings(_directory))
if settings.demo_broker():
    app.conf.update(broker_url=settings.demo_broker(), result_backend=None)
else:
    # The filesystem transport polls its folders (once a second by default): poll often,
    # so the worker picks jobs up, and hears the demo's shutdown request, without a wait.
    app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                         "polling_interval": POLLING_INTERVAL}
app.conf.update(worker_hijack_root_logger=False, task_track_started=True,
                morag_jobs_database_url=settings.database_url())
install(app, stage_plans={"audio": AUDIO_PLAN}, interval=0.2, heartbeat_interval=2.0)
log = get_task_logger("demo.tasks")  # not "morag_jobs.*": the log tap ignores its own package


@app.task
def transcribe(seconds: float = 8.0) -> str:
    """Callbacks: report_progress, the seed's progress_callback and stage() blocks."""
    pause = seconds / 40
    for step in range(1, 6):
        report_progress(step * 20, stage="download", message="downloading talk.mp3")
        time.sleep(pause)
    on_progress = progress_callback(stage="transcription")
    for segment in range(1, 26):
        on_progress(segment / 25, f"transcribed segment {segment} of 25")
        time.sleep(pause)
    with stage("indexing", total=10) as indexing:
        for chunk in range(1, 11):
            time.sleep(pause)
            indexing.increment(message=f"indexed chunk {chunk} of 10")
    return "talk.mp3 transcribed"


@app.task
def ingest_logs(seconds: float = 8.0) -> int:
    """No progress calls at all: the log tap reads the task's own log lines."""
    files = 30
    for number in range(1, files + 1):
        log.info("Processing file %d of %d", number, files)
        time.sleep(seconds / files)
    return files


@app.task
def convert(seconds: float = 8.0) -> str:
    """A subprocess printing a tqdm bar; run_with_progress parses its stderr."""
    script = TQDM_SCRIPT.format(pause=seconds / 40)
    run_with_progress([sys.executable, "-c", script], timeout=120)
    return "converted"
