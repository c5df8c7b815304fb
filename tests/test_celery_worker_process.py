"""A real ``celery worker`` process (prefork pool), run to the end or killed mid-task.

Each test starts ``python -m celery -A tests.celery_app worker --pool prefork -c 1`` in
a session of its own, on a queue of its own (Redis database 14) and a fresh PostgreSQL
schema, and kills the whole process group when it ends, whatever happens. A worker
killed with SIGKILL cannot say goodbye: only the missing heartbeat tells the reaper.

The worker also imports this module (``--include``) for the tasks below, whose pool
process the tests kill to see what Celery does with their message.
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
import redis
from celery import Task, group
from celery.result import AsyncResult

from morag_jobs.celery import Runtime, RuntimeConfig, report_progress, submit
from morag_jobs.reaper import reap
from morag_jobs.store import Family, Job, JobStatus, JobStore
from morag_jobs.task.runtime import default_runtime, set_default_runtime
from tests import celery_app as tasks
from tests.celery_app import describe, history, wait_for_job
from tests.handler_helpers import handler_of
from tests.services import own_redis_keys

pytestmark = [pytest.mark.celery, pytest.mark.redis, pytest.mark.postgres]

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT = 0.5
REAP_TIMEOUT = 2.0
MODULE = "tests.test_celery_worker_process"




def _crawl_once(marker: str) -> int:
    """The first delivery writes its process id to ``marker`` and crawls (silent, so only
    the heartbeat shows it alive) until killed; a second delivery ends at once."""
    seen = Path(marker)
    if seen.exists():
        report_progress(50, message="delivered again")
        return 2
    seen.write_text(str(os.getpid()))
    return int(tasks.crawl.run(300, 0.1))


@tasks.app.task(name="morag_test.crawl_once_acks_late", acks_late=True)
def crawl_once_acks_late(marker: str) -> int:
    return _crawl_once(marker)


@tasks.app.task(name="morag_test.crawl_once_redelivered", acks_late=True,
                reject_on_worker_lost=True)
def crawl_once_redelivered(marker: str) -> int:
    return _crawl_once(marker)


@tasks.app.task(name="morag_test.fenced", acks_late=True, reject_on_worker_lost=True)
def fenced(marker: str) -> str:
    """The first delivery reports slowly from 1%; a second delivery (the marker exists)
    reports from 50% and ends first. Both report, so the older one has to be fenced."""
    first = not Path(marker).exists()
    if first:
        Path(marker).write_text(str(os.getpid()))
    run = "first" if first else "second"
    for step in range(1 if first else 50, 60):
        report_progress(float(step), message=f"{run} run: step {step}")
        time.sleep(0.2 if first else 0.4)
    return run


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

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the main process (its pool children run on), SIGCONT after the block:
        while paused it cannot act on a pool child's death."""
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """SIGSTOP the whole worker (main process and pool), SIGCONT after the block: a
        worker cut off by a network partition, that comes back."""
        os.killpg(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)

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
def broker() -> Iterator[redis.Redis]:
    # Flushing afterwards also drops the unacknowledged message of a killed acks_late task.
    with own_redis_keys(tasks.BROKER_URL) as client:
        yield client


@pytest.fixture
def job_db(postgres_url: str) -> str:
    return tasks.fresh_postgres_schema(postgres_url)


@pytest.fixture
def store(job_db: str) -> Iterator[JobStore]:
    with JobStore(job_db) as job_store:
        yield job_store


@pytest.fixture
def start_worker(
    job_db: str, broker: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(reap_timeout: float = 0, queue: str | None = None,
              **extra_env: str) -> WorkerProcess:
        queue = queue or f"morag-prefork-{uuid.uuid4().hex[:8]}"
        command = [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
            "--pool", "prefork", "-c", "1", "--loglevel", "INFO", "-Q", queue, "-I", MODULE,
            "-n", f"{queue}-{len(started)}@%h", "--without-mingle", "--without-gossip",
            "--morag-heartbeat", str(HEARTBEAT), "--morag-reap-timeout", str(reap_timeout),
        ]
        env = {**os.environ, "MORAG_DATABASE_URL": job_db,
               "MORAG_TEST_CELERY_BROKER_URL": tasks.BROKER_URL, **extra_env}
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


def run_until_silent(
    task: Task, args: tuple[object, ...], worker: WorkerProcess, store: JobStore, job_db: str
) -> Job:
    """Submit ``task``; the job once it has reported and gone silent, heartbeats only."""
    with submitting_to(job_db):
        job = submit(task, args, queue=worker.queue)
    running = worker.wait_for_job(
        store, job.id, lambda j: j.status is JobStatus.PROCESSING and j.percentage > 0,
        "PROCESSING with progress")
    assert running.last_progress_at is not None
    alive = worker.wait_for_job(
        store, job.id,
        lambda j: j.heartbeat_at is not None and j.last_progress_at is not None
        and j.heartbeat_at - j.last_progress_at >= timedelta(seconds=HEARTBEAT * 0.8),
        "a heartbeat while the task is silent", timeout=10)
    return alive


def run_until_killed(task: Task, worker: WorkerProcess, store: JobStore, job_db: str) -> Job:
    """Submit ``task``, let it report and go silent, then SIGKILL the worker; the job then."""
    alive = run_until_silent(task, (300, 0.1), worker, store, job_db)
    worker.kill()
    assert reap(handler_of(store), REAP_TIMEOUT) == [], (
        "expected nothing reaped while the last heartbeat is younger than the timeout")
    return alive


def reaped(store: JobStore, job_id: str, timeout: float = 10.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in reap(handler_of(store), REAP_TIMEOUT):
            if job.id == job_id:
                return job
        time.sleep(0.2)
    raise AssertionError(f"expected the reaper to take job {job_id} within {timeout}s: "
                         f"{store.get_job(job_id)}")


def settled(result: AsyncResult, timeout: float = 30.0) -> AsyncResult:
    """``result`` once Celery has decided it: the main process waits ``worker_lost_wait``
    (10 s) after a pool process dies before it fails or requeues the task."""
    deadline = time.monotonic() + timeout
    while result.state not in ("SUCCESS", "FAILURE") and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def until_nothing_left(broker: redis.Redis, queue: str, timeout: float = 10.0) -> dict[str, int]:
    """Messages still waiting in ``queue`` or delivered and not acknowledged (kombu's
    ``unacked`` hash), once none are left or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = {"queued": broker.llen(queue), "unacked": broker.hlen("unacked")}
        left = {name: count for name, count in left.items() if count}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


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
    log = worker.tail()
    assert "[debug" not in log and "DEBUG/" not in log, (
        f"the library's debug lines stay out of a worker's INFO log:\n{log}")


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


def test_an_acks_late_job_whose_pool_process_dies_is_failed_as_worker_lost(
    start_worker: Callable[..., WorkerProcess], store: JobStore, job_db: str, tmp_path: Path,
    broker: redis.Redis,
) -> None:
    """Without reject_on_worker_lost Celery acknowledges the message of a task whose pool
    process died, acks_late or not: nothing comes back, so the job must not wait for it."""
    worker = start_worker()
    marker = tmp_path / "pid"
    alive = run_until_silent(crawl_once_acks_late, (str(marker),), worker, store, job_db)
    assert alive.metadata.get("redelivery_expected") is False, alive.metadata
    os.kill(int(marker.read_text()), signal.SIGKILL)
    job = reaped(store, alive.id)
    assert job.status is JobStatus.FAILED, f"expected FAILED, got {job.status}: {job.summary}"
    assert job.error == f"worker lost: no heartbeat for {REAP_TIMEOUT:g}s", job.error
    assert job.percentage == 5.0, "expected the percentage reached to be kept"
    result = settled(AsyncResult(alive.metadata["task_id"], app=tasks.app))
    assert result.state == "FAILURE" and "WorkerLostError" in repr(result.result), (
        f"expected Celery to have failed the task too: {result.state} {result.result!r}\n"
        f"{worker.tail()}")
    left = until_nothing_left(broker, worker.queue)
    assert left == {}, f"expected no message left to deliver again: {left}\n{worker.tail()}"


def test_a_job_whose_task_celery_redelivers_waits_pending_then_finishes(
    start_worker: Callable[..., WorkerProcess], store: JobStore, job_db: str, tmp_path: Path,
) -> None:
    """With reject_on_worker_lost Celery requeues the message of a task whose pool process
    died. The main process is paused first, so the reaper sees the job silent before the
    task comes back: PENDING awaiting redelivery, then PROCESSING again, then FINISHED."""
    worker = start_worker()
    marker = tmp_path / "pid"
    alive = run_until_silent(crawl_once_redelivered, (str(marker),), worker, store, job_db)
    assert alive.metadata.get("redelivery_expected") is True, alive.metadata
    with worker.paused():
        os.kill(int(marker.read_text()), signal.SIGKILL)
        waiting = reaped(store, alive.id)
        assert waiting.status is JobStatus.PENDING, f"expected PENDING, got {waiting.status}"
        assert "waiting for redelivery" in waiting.summary, waiting.summary
        assert "redelivery_deadline" in waiting.metadata, waiting.metadata
    done = worker.wait_for_job(store, alive.id, lambda j: j.status.is_terminal,
                               "the redelivered task to end the job", timeout=40)
    assert done.status is JobStatus.FINISHED and done.percentage == 100.0, (
        f"expected FINISHED at 100%, got {done.status} {done.percentage} {done.error}")
    starts = [e.message or "" for e in history(store, alive.id, "start")]
    assert len(starts) == 2 and starts[1].startswith("redelivered on"), starts
    kinds = [(e.source, e.kind) for e in history(store, alive.id)]
    assert ("reaper", "requeue") in kinds and ("reaper", "failure") not in kinds, kinds


def test_a_group_of_50_tasks_on_two_worker_processes_climbs_to_100(
    start_worker: Callable[..., WorkerProcess], store: JobStore, job_db: str
) -> None:
    """The parent of a canvas: children written by two workers at once, the parent's
    percentage kept in the children's transactions, never going back."""
    first = start_worker()
    second = start_worker(queue=first.queue)
    with submitting_to(job_db):
        parent = submit(group(tasks.count_up.s(2, 0.05) for _ in range(50)),
                        queue=first.queue)
    seen: list[float] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = store.require_job(parent.id)
        seen.append(now.percentage)
        if now.status.is_terminal:
            break
        time.sleep(0.05)
    assert now.status is JobStatus.FINISHED and now.percentage == 100.0, (
        f"{now.status} {now.percentage}\n{first.tail()}\n{second.tail()}")
    assert seen == sorted(seen), "the parent never went back"
    assert now.children_done == 50 and now.progress_sum == pytest.approx(5000.0)
    workers = {str(k.metadata.get("worker", "")).split("@")[0]
               for k in Family(store).children(parent.id, limit=None)}
    assert len(workers) == 2, f"both workers ran children: {workers}"


def test_a_partitioned_worker_that_comes_back_is_fenced_off(
    start_worker: Callable[..., WorkerProcess], store: JobStore, job_db: str, tmp_path: Path,
) -> None:
    """SIGSTOP a worker past the reap timeout; a second worker takes the redelivered task
    (attempt 2); SIGCONT the first: its progress and completion are refused, counted, and
    its task stops at its next report ("superseded by attempt 2")."""
    old = start_worker()
    marker = tmp_path / "pid"
    with submitting_to(job_db):
        job = submit(fenced, (str(marker),), queue=old.queue)
    old.wait_for_job(store, job.id, lambda j: j.percentage >= 3.0, "the first run's progress")
    with old.stopped():
        waiting = reaped(store, job.id)
        assert waiting.status is JobStatus.PENDING and waiting.attempt == 1, waiting
        new = start_worker(queue=old.queue, MORAG_TEST_VISIBILITY_TIMEOUT="2")
        new.wait_for_job(store, job.id, lambda j: j.attempt == 2 and j.percentage >= 50.0,
                         "the second worker to take the task over", timeout=40)
    done = new.wait_for_job(store, job.id, lambda j: j.status.is_terminal, "the job to end",
                            timeout=40)
    assert (done.status, done.attempt, done.percentage) == (JobStatus.FINISHED, 2, 100.0), (
        f"{done}\n{old.tail()}")
    rows = history(store, job.id)
    takeover = max(i for i, e in enumerate(rows) if e.kind == "start")
    late = [e.message for e in rows[takeover:] if (e.message or "").startswith("first run")]
    assert not late, f"the old attempt wrote after the takeover: {late}"
    assert done.ignored_count >= 1, "the old attempt's reports were refused and counted"
    deadline = time.monotonic() + 20
    while "superseded by attempt 2" not in old.tail() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "superseded by attempt 2" in old.tail(), old.tail()
    assert AsyncResult(job.task_id, app=tasks.app).get(timeout=10) == "second"
