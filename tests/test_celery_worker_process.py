"""A real ``celery worker`` process (prefork pool), run to the end or killed mid-task.

Each test starts ``python -m celery -A tests.celery_app worker --pool prefork -c 1`` in
a session of its own, on a queue of its own (Redis database 14) and a fresh PostgreSQL
schema, and kills the whole process group when it ends, whatever happens. A worker
killed with SIGKILL cannot say goodbye: only the missing heartbeat tells the reaper.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from morag_jobs.celery import submit
from morag_jobs.celery.runtime import Runtime, RuntimeConfig, default_runtime, set_default_runtime
from morag_jobs.reaper import reap
from morag_jobs.store import Job, JobStatus, JobStore
from tests import celery_app as tasks
from tests.celery_app import describe, history, wait_for_job
from tests.services import flushed_redis

pytestmark = [pytest.mark.celery, pytest.mark.redis, pytest.mark.postgres]

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT = 0.5
REAP_TIMEOUT = 2.0


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    queue: str
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as the OOM killer would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_for_job(
        self, store: JobStore, job_id: str, until: Callable[[Job], bool], what: str,
        timeout: float = 20.0,
    ) -> Job:
        try:
            return wait_for_job(store, job_id, until, what, timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- worker log ---\n{self.tail()}") from None


@pytest.fixture
def broker() -> Iterator[None]:
    # Flushing afterwards also drops the unacknowledged message of a killed acks_late task.
    with flushed_redis(tasks.BROKER_URL):
        yield


@pytest.fixture
def job_db(postgres_url: str) -> str:
    return tasks.fresh_postgres_schema(postgres_url)


@pytest.fixture
def store(job_db: str) -> Iterator[JobStore]:
    with JobStore(job_db) as job_store:
        yield job_store


@pytest.fixture
def start_worker(
    job_db: str, broker: None, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(reap_timeout: float = 0) -> WorkerProcess:
        queue = f"morag-prefork-{uuid.uuid4().hex[:8]}"
        command = [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
            "--pool", "prefork", "-c", "1", "--loglevel", "INFO", "-Q", queue,
            "-n", f"{queue}@%h", "--without-mingle", "--without-gossip",
            "--morag-heartbeat", str(HEARTBEAT), "--morag-reap-timeout", str(reap_timeout),
        ]
        env = {**os.environ, "MORAG_DATABASE_URL": job_db,
               "MORAG_TEST_CELERY_BROKER_URL": tasks.BROKER_URL}
        log = tmp_path / f"{queue}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        worker = WorkerProcess(process, queue, log)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.kill()


@contextlib.contextmanager
def submitting_to(database_url: str) -> Iterator[None]:
    """``submit`` writes through the default runtime: point it at the worker's job table."""
    previous = default_runtime()
    runtime = Runtime(RuntimeConfig(database_url=database_url))
    set_default_runtime(runtime)
    try:
        yield
    finally:
        set_default_runtime(previous)
        runtime.close()


def run_until_killed(
    task: tasks.Task, worker: WorkerProcess, store: JobStore, job_db: str
) -> Job:
    """Submit ``task``, let it report and go silent, then SIGKILL the worker; the job then."""
    with submitting_to(job_db):
        job = submit(task, (300, 0.1), queue=worker.queue)
    running = worker.wait_for_job(
        store, job.id, lambda j: j.status is JobStatus.PROCESSING and j.percentage > 0,
        "PROCESSING with progress")
    assert running.last_progress_at is not None
    alive = worker.wait_for_job(
        store, job.id,
        lambda j: j.heartbeat_at is not None and j.last_progress_at is not None
        and j.heartbeat_at - j.last_progress_at >= timedelta(seconds=HEARTBEAT * 0.8),
        "a heartbeat while the task is silent", timeout=10)
    worker.kill()
    assert reap(store, REAP_TIMEOUT) == [], (
        "expected nothing reaped while the last heartbeat is younger than the timeout")
    return alive


def reaped(store: JobStore, job_id: str, timeout: float = 10.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in reap(store, REAP_TIMEOUT):
            if job.id == job_id:
                return job
        time.sleep(0.2)
    raise AssertionError(f"expected the reaper to take job {job_id} within {timeout}s: "
                         f"{store.get_job(job_id)}")


def test_a_prefork_worker_process_runs_a_submitted_job_to_finished(
    start_worker: Callable[..., WorkerProcess], store: JobStore, job_db: str
) -> None:
    """A forked pool child builds its own runtime, whatever the parent had built.

    With the reaper on (``--morag-reap-timeout 30``) the main process builds its runtime
    for the reaper thread while the pool forks its child.
    """
    worker = start_worker(reap_timeout=30)
    with submitting_to(job_db):
        job = submit(tasks.count_up, (3,), queue=worker.queue)
    done = worker.wait_for_job(store, job.id, lambda j: j.status.is_terminal, "the job to end",
                               timeout=10)
    assert done.status is JobStatus.FINISHED and done.percentage == 100.0, (
        f"expected FINISHED at 100%, got {done.status} {done.percentage} {done.error}")
    events = history(store, job.id)
    progress = [e.percentage for e in events if e.kind == "progress"]
    assert progress == [25.0, 50.0, 75.0], (
        f"expected the child's three reports in the history: {describe(events)}")
    assert str(done.metadata.get("worker", "")).startswith(worker.queue), done.metadata


def test_a_job_whose_worker_is_killed_is_failed_as_worker_lost(
    start_worker: Callable[..., WorkerProcess], store: JobStore, job_db: str
) -> None:
    worker = start_worker()
    alive = run_until_killed(tasks.crawl, worker, store, job_db)
    job = reaped(store, alive.id)
    assert job.status is JobStatus.FAILED, f"expected FAILED, got {job.status}"
    assert job.error is not None and job.error.startswith("worker lost"), job.error
    assert job.percentage == 5.0, "expected the percentage reached to be kept"
    assert history(store, job.id)[-1].source == "reaper"


def test_a_killed_acks_late_job_goes_back_to_pending_for_redelivery(
    start_worker: Callable[..., WorkerProcess], store: JobStore, job_db: str
) -> None:
    worker = start_worker()
    alive = run_until_killed(tasks.crawl_acks_late, worker, store, job_db)
    assert alive.metadata.get("acks_late") is True, alive.metadata
    job = reaped(store, alive.id)
    assert job.status is JobStatus.PENDING, f"expected PENDING (redelivery), got {job.status}"
    assert "waiting for redelivery" in job.summary, job.summary
    assert job.finished_at is None and job.error is None
