"""The Celery app and tasks of the worker-plugin tests, and the helpers they share.

Importable by an in-process worker (``start_worker(app)``) and by a real one
(``python -m celery -A tests.celery_app worker``). The broker and result backend are
Redis database 14 (``MORAG_TEST_CELERY_BROKER_URL``); the job table is the one
``MORAG_DATABASE_URL`` names, read by morag-jobs when the runtime first needs it.
Task names are explicit so that both import paths register the same names.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.utils.log import get_task_logger

from morag_jobs.celery import (
    get_current_job_id,
    install,
    progress_callback,
    report_progress,
    run_with_progress,
    stage,
)
from morag_jobs.stages import StagePlan
from morag_jobs.store import HistoryEntry, Job, JobStore
from tests import services

BROKER_URL = os.environ.get("MORAG_TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
AUDIO = "morag_test.audio"  # a job type no other test uses: install() registers it process-wide
AUDIO_PLAN = StagePlan({"download": (0, 10), "processing": (10, 70), "indexing": (70, 100)})
FLUSH_INTERVAL = 0.05
PAUSE = 0.08  # longer than the flush interval: each report of a task gets its own write

app = Celery("morag_test", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=600,
    task_default_queue="morag-test",
    worker_prefetch_multiplier=1,
)
if os.environ.get("MORAG_TEST_VISIBILITY_TIMEOUT"):
    # A worker that takes over unacknowledged messages within seconds (the fenced-attempt
    # test's second worker): kombu's Redis transport restores them after this long.
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["MORAG_TEST_VISIBILITY_TIMEOUT"]),
        "unacked_restore_interval": 1, "unacked_restore_throttle": 1,
    }
PACKS = Path(__file__).resolve().parent / "packs"  # "cooked 3 pies of 4": no built-in reads it
runtime = install(
    app, stage_plans={AUDIO: AUDIO_PLAN}, interval=FLUSH_INTERVAL,
    celery_progress_interval=0.2, pattern_dirs=[PACKS],
)

plain_logger = logging.getLogger("tests.celery_app.plain")
task_logger = get_task_logger("tests.celery_app.tasks")

TQDM_SCRIPT = """\
import sys, time
from tqdm import tqdm
for _ in tqdm(range(5), file=sys.stderr, mininterval=0, ascii=True):
    time.sleep(0.08)
print("transcript ready")
"""
FAILING_SCRIPT = """\
import sys
print("starting", flush=True)
sys.stderr.write("loading model\\nerror: model file is truncated\\n")
sys.exit(3)
"""


@app.task(name="morag_test.until_cancelled")
def until_cancelled(steps: int = 600, pause: float = 0.02) -> int:
    """Reports step after step; its own ``except Exception`` must not hide a cancellation."""
    for step in range(1, steps + 1):
        try:  # noqa: SIM105 - user code as it is often written
            report_progress(100.0 * step / (steps + 1), message=f"step {step}")
        except Exception:  # what user code does: JobCancelled is a BaseException
            pass
        time.sleep(pause)
    return steps


@app.task(name="morag_test.count_up")
def count_up(steps: int = 4, pause: float = PAUSE) -> int:
    """Reports step/(steps+1) of the way after each step, so 100% only comes from success."""
    for step in range(1, steps + 1):
        report_progress(step * 100.0 / (steps + 1), message=f"step {step} of {steps}")
        time.sleep(pause)
    return steps


@app.task(name="morag_test.transcribe")
def transcribe(segments: int = 5, pause: float = PAUSE) -> str:
    """The seed's shape: a download stage, then library code given a progress callback."""
    report_progress(100, stage="download", message="downloaded")
    time.sleep(pause)
    on_progress = progress_callback(stage="processing")
    for segment in range(1, segments + 1):
        on_progress(segment / segments, f"segment {segment} of {segments}")
        time.sleep(pause)
    report_progress(50, stage="indexing", message="indexing")
    time.sleep(pause)
    return "transcribed"


@app.task(name="morag_test.report_once")
def report_once(percent: float = 50.0) -> str | None:
    """Reports once and returns at once: the last state must still reach the job."""
    report_progress(percent, message="halfway")
    return get_current_job_id()


@app.task(name="morag_test.fail_after")
def fail_after(percent: float = 40.0) -> None:
    report_progress(percent, message="parsing")
    raise ValueError("corrupt input file")


@app.task(name="morag_test.retry_once", bind=True, max_retries=2)
def retry_once(self: Task, countdown: float = 1.0) -> int:
    if self.request.retries == 0:
        report_progress(30, message="first attempt")
        raise self.retry(countdown=countdown, exc=ConnectionError("upstream timed out"))
    report_progress(80, message="second attempt")
    return int(self.request.retries)


@app.task(name="morag_test.log_line")
def log_line(line: str, via: str = "stdlib") -> None:
    """A task that only logs (stdlib ``logging`` or Celery's task logger)."""
    (task_logger if via == "celery" else plain_logger).info(line)


@app.task(name="morag_test.nested_stages")
def nested_stages(chunks: int = 3, fail_at_chunk: int | None = None, pause: float = PAUSE) -> None:
    with stage("download"):
        time.sleep(pause)
    with stage("processing", total=chunks):
        for number in range(1, chunks + 1):
            with stage(f"chunk {number}") as chunk:
                chunk.update(percent=50, message=f"chunk {number} half done")
                time.sleep(pause)
                if number == fail_at_chunk:
                    raise ValueError(f"chunk {number} is corrupt")
            time.sleep(pause)
    with stage("indexing") as indexing:
        indexing.update(percent=100)


@app.task(name="morag_test.run_script")
def run_script(script: str, stage_name: str | None = None) -> str:
    done = run_with_progress([sys.executable, "-c", script], stage=stage_name, timeout=30)
    return done.stdout


def _crawl(pages: int, pause: float) -> int:
    """Reports once, then stays silent: only the heartbeat shows the worker is alive."""
    report_progress(5, message="crawling")
    deadline = time.monotonic() + pages * pause
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return pages


@app.task(name="morag_test.crawl")
def crawl(pages: int = 300, pause: float = 0.1) -> int:
    return _crawl(pages, pause)


@app.task(name="morag_test.crawl_acks_late", acks_late=True)
def crawl_acks_late(pages: int = 300, pause: float = 0.1) -> int:
    return _crawl(pages, pause)


# -- helpers shared by the tests --------------------------------------------------------------


def fresh_postgres_schema(base_url: str) -> str:
    """A new, migrated schema in the session database; the URL selects it."""
    return services.fresh_postgres_schema(base_url, migrate=True)


def wait_for_job(
    store: JobStore, job_id: str, until: Callable[[Job], bool], what: str,
    timeout: float = 15.0,
) -> Job:
    """Poll the job until ``until(job)``; fail saying what was awaited and what was seen."""
    deadline = time.monotonic() + timeout
    job = store.get_job(job_id)
    while job is None or not until(job):
        if time.monotonic() > deadline:
            seen = "no job" if job is None else f"{job.status} at {job.percentage}%"
            raise AssertionError(f"job {job_id}: expected {what} within {timeout}s, saw {seen}")
        time.sleep(0.02)
        job = store.get_job(job_id)
    return job


def history(store: JobStore, job_id: str, kind: str | None = None) -> list[HistoryEntry]:
    return [e for e in store.history(job_id) if kind is None or e.kind == kind]


def describe(events: list[HistoryEntry]) -> list[tuple[str, Any, str | None]]:
    """A readable history for assertion messages."""
    return [(e.kind, e.percentage, e.message) for e in events]
