"""The Celery worker plugin end to end: a real in-process worker, Redis, PostgreSQL.

Tasks live in ``tests/celery_app.py``; ``install()`` ran once when it was imported.
The worker runs in a thread of this process (``celery.contrib.testing.worker``), with
the solo pool for most tests and the threads pool for the last ones; the broker and
result backend are Redis database 14 and the job table a fresh PostgreSQL schema.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis
from celery import Celery, Task, chain, chord, group
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult
from celery_progress.backend import Progress

from morag_jobs import _config
from morag_jobs.celery import JOB_TYPE_HEADER, SubmittedJob, submit
from morag_jobs.celery.plugin import _redelivered_if_lost
from morag_jobs.handler import ProgressHandler
from morag_jobs.stages import register_stage_plan
from morag_jobs.store import Family, Job, JobStatus, JobStore
from morag_jobs.store.engine import masked_url, parse_url
from tests import celery_app as tasks
from tests.celery_app import AUDIO, AUDIO_PLAN, describe, history, wait_for_job
from tests.services import own_redis_keys

pytestmark = [pytest.mark.celery, pytest.mark.redis, pytest.mark.postgres]


class InProcessWorker:
    """One embedded worker at a time; ``running(pool, loglevel)`` switches when asked."""

    def __init__(self) -> None:
        self.setup: tuple[str, str] | None = None
        self._stack: ExitStack | None = None

    def running(self, pool: str, loglevel: str = "INFO") -> InProcessWorker:
        if (pool, loglevel) != self.setup:
            self.stop()
            stack = ExitStack()
            stack.enter_context(start_worker(
                tasks.app, pool=pool, concurrency=4 if pool == "threads" else 1,
                loglevel=loglevel, perform_ping_check=False, shutdown_timeout=30,
            ))
            self._stack, self.setup = stack, (pool, loglevel)
        return self

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self.setup = None, None


@pytest.fixture(scope="module")
def job_db(postgres_url: str) -> Iterator[str]:
    """A migrated schema of its own, handed to the app through MORAG_DATABASE_URL."""
    url = tasks.fresh_postgres_schema(postgres_url)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MORAG_DATABASE_URL", url)
        store = tasks.runtime.handler.store  # built now, from the variable
        assert store.url == masked_url(parse_url(url)), (
            f"expected the app's job table to be {url}, but its runtime was already built "
            f"for {store.url}")
        yield url


@pytest.fixture(scope="module")
def broker() -> Iterator[redis.Redis]:
    with own_redis_keys(tasks.BROKER_URL) as client:
        yield client


@pytest.fixture(scope="module")
def workers(job_db: str, broker: redis.Redis) -> Iterator[InProcessWorker]:
    controller = InProcessWorker()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def worker(workers: InProcessWorker) -> InProcessWorker:
    return workers.running("solo")


@pytest.fixture
def quiet_worker(workers: InProcessWorker) -> InProcessWorker:
    """At WARNING, the log level ``celery worker`` runs at unless told otherwise."""
    return workers.running("solo", loglevel="WARNING")


@pytest.fixture
def threads_worker(workers: InProcessWorker) -> InProcessWorker:
    return workers.running("threads")


@pytest.fixture(scope="module")
def store(job_db: str) -> Iterator[JobStore]:
    with JobStore(job_db) as job_store:
        yield job_store


def finished(job: Job) -> bool:
    return job.status.is_terminal


# -- the job lifecycle ------------------------------------------------------------------------


def test_submit_creates_a_pending_job_before_any_worker_runs_it(
    job_db: str, broker: redis.Redis, store: JobStore
) -> None:
    job = submit(tasks.count_up, (2,), name="nightly import", user_id="u1",
                 queue="morag-nobody-consumes")
    row = store.get_job(job.id)
    assert row is not None, "expected submit() to write the job row before sending the task"
    assert row.status is JobStatus.PENDING and row.percentage == 0.0, (
        f"expected a PENDING job at 0% before a worker ran it, got {row.status} {row.percentage}")
    assert row.started_at is None
    assert (row.name, row.user_id, row.metadata["task_name"]) == (
        "nightly import", "u1", "morag_test.count_up")
    assert tasks.runtime.handler.mappings.lookup("task", row.metadata["task_id"]) == job.id, (
        "expected the task id to be mapped to the job id")


def test_a_submitted_task_goes_processing_then_finished_at_100_with_history(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.count_up, (4,), user_id="u1")
    running = wait_for_job(store, job.id, lambda j: j.status is JobStatus.PROCESSING,
                           "PROCESSING while the task runs")
    assert running.started_at is not None, "expected started_at once a worker picked it up"
    done = wait_for_job(store, job.id, finished, "the job to end")
    assert done.status is JobStatus.FINISHED and done.percentage == 100.0, (
        f"expected FINISHED at 100%, got {done.status} at {done.percentage}%")
    events = history(store, job.id)
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "completion", (
        f"expected the history to open with the start and close with the completion: "
        f"{describe(events)}")
    progress = [e.percentage for e in events if e.kind == "progress"]
    assert len(progress) >= 2 and progress == sorted(progress), (
        f"expected several rising progress entries between start and completion: {progress}")
    assert progress[0] > 0 and progress[-1] <= 80.0, (
        f"expected the reported 20..80% in the history, got {progress}")


def test_progress_callback_maps_a_stage_fraction_onto_the_stage_plan(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.transcribe, (5,), job_type=AUDIO, stages=AUDIO_PLAN)
    assert job.stages is not None and job.stages.names == AUDIO_PLAN.names
    done = wait_for_job(store, job.id, finished, "the job to end")
    assert done.status is JobStatus.FINISHED
    progress = history(store, job.id, "progress")
    inside = [e.percentage for e in progress if e.stage == "processing"]
    assert any(10.0 < p < 70.0 for p in inside), (
        f"expected an overall percentage inside the processing band 10..70: {describe(progress)}")
    assert all(e.percentage is not None and e.percentage <= 70.0 for e in progress
               if e.stage in ("download", "processing")), describe(progress)
    assert any(e.stage == "indexing" and e.percentage == 85.0 for e in progress), (
        f"expected indexing 50% to be 85% overall: {describe(progress)}")
    assert done.summary == "indexing", "the task's last message stays the job's message"
    assert done.metadata["result"] == "transcribed", "a small return value is kept"


def test_a_task_sent_with_delay_gets_a_job_whose_id_is_the_task_id(
    worker: InProcessWorker, store: JobStore
) -> None:
    result = tasks.report_once.delay(50.0)
    done = wait_for_job(store, result.id, finished, "a job named after the task id")
    assert done.status is JobStatus.FINISHED and done.percentage == 100.0
    assert [e.percentage for e in history(store, result.id, "progress")] == [50.0], (
        "expected the one report, flushed before the completion, in the history")
    assert result.get(timeout=10) == result.id, (
        "expected get_current_job_id() inside the task to be its task id")


def test_a_task_sent_with_delay_shows_as_pending_from_the_moment_it_is_queued(
    worker: InProcessWorker, store: JobStore
) -> None:
    """The job is created when the task is published (``before_task_publish``), typed by
    the task's name, so a plan registered for that name applies to plain ``.delay()``."""
    register_stage_plan(tasks.transcribe.name, AUDIO_PLAN)
    try:
        queued = tasks.transcribe.apply_async((3, 0.05), countdown=1.5)
        job = store.require_job(queued.id)  # no worker has seen it yet
        assert (job.status, job.job_type, job.name) == (
            JobStatus.PENDING, tasks.transcribe.name, tasks.transcribe.name)
        assert job.stages == AUDIO_PLAN, "the plan registered for the task's name"
        assert job.metadata["task_id"] == queued.id
        done = wait_for_job(store, queued.id, finished, "the job to end")
    finally:
        _config.stage_plans.pop(tasks.transcribe.name, None)
    progress = [e.percentage for e in history(store, queued.id, "progress")]
    assert done.status is JobStatus.FINISHED and max(progress) == 85.0, (
        f"expected 'indexing 50%' mapped through the plan to 85%, not taken as overall: "
        f"{progress}")


def test_a_job_type_header_types_a_plainly_sent_task(
    worker: InProcessWorker, store: JobStore
) -> None:
    register_stage_plan(AUDIO, AUDIO_PLAN)  # as install() did: other tests reset the registry
    sent = tasks.report_once.apply_async((30.0,), headers={JOB_TYPE_HEADER: AUDIO})
    assert store.require_job(sent.id).job_type == AUDIO
    assert store.require_job(sent.id).stages == AUDIO_PLAN
    wait_for_job(store, sent.id, finished, "the job to end")


def test_submit_returns_the_job_and_celerys_async_result(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.count_up, (2,), name="two steps")
    assert isinstance(job, SubmittedJob) and isinstance(job.async_result, AsyncResult)
    assert job.task_id == job.async_result.id == job.metadata["task_id"]
    assert (job.name, job.status) == ("two steps", JobStatus.PENDING)
    assert job.async_result.get(timeout=15) == 2
    assert wait_for_job(store, job.id, finished, "the job to end").status is JobStatus.FINISHED
    same_task = [j.id for j in store.list_jobs(limit=None, job_type=tasks.count_up.name)
                 if j.metadata.get("task_id") == job.task_id]
    assert same_task == [job.id], "one job: publishing a submitted task creates no second one"


def test_a_failing_task_fails_its_job_keeping_the_percentage_and_the_error(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.fail_after, (40.0,))
    done = wait_for_job(store, job.id, finished, "the job to end")
    assert done.status is JobStatus.FAILED, f"expected FAILED, got {done.status}"
    assert done.percentage == 40.0, (
        f"expected the 40% reported just before the exception to be kept, got {done.percentage}")
    assert done.error == "ValueError: corrupt input file", done.error
    assert history(store, job.id)[-1].kind == "failure"


def test_a_failing_task_keeps_celerys_failure_state_in_the_result_backend(
    worker: InProcessWorker, store: JobStore
) -> None:
    """The celery-progress mirror must never overwrite a task's final state."""
    job = submit(tasks.fail_after, (40.0,))
    wait_for_job(store, job.id, finished, "the job to end")
    result = AsyncResult(job.metadata["task_id"], app=tasks.app)
    deadline = time.monotonic() + 3
    while result.state != "FAILURE" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.state == "FAILURE", (
        f"expected the result backend to say FAILURE after the task raised, got {result.state} "
        f"{result.info!r}")


def test_a_retried_task_stays_processing_with_the_retry_in_its_history(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.retry_once, (), {"countdown": 1.5})
    retried = wait_for_job(
        store, job.id, lambda j: j.summary.startswith("retry") or j.status.is_terminal,
        "the retry to be noted")
    assert retried.status is JobStatus.PROCESSING, (
        f"expected PROCESSING while the retry waits, got {retried.status}")
    assert retried.percentage == 30.0, "expected the first attempt's 30% to be kept"
    assert "upstream timed out" in retried.summary, retried.summary
    done = wait_for_job(store, job.id, finished, "the second attempt to end the job")
    assert done.status is JobStatus.FINISHED and done.percentage == 100.0
    kinds = [e.kind for e in history(store, job.id)]
    assert kinds.index("retry") < len(kinds) - 1 and kinds.count("start") == 2, (
        f"expected start, retry, a second start, then the completion: {kinds}")


def test_revoking_a_task_cancels_its_job(worker: InProcessWorker, store: JobStore) -> None:
    job = submit(tasks.count_up, (2,), countdown=1.0)
    tasks.app.control.revoke(job.metadata["task_id"])
    done = wait_for_job(store, job.id, finished, "the job to end", timeout=10)
    assert done.status is JobStatus.CANCELLED, f"expected CANCELLED, got {done.status}"
    assert history(store, job.id)[-1].kind == "cancellation"


@tasks.app.task(name="morag_test.plugin.acks_late_only", acks_late=True, shared=False)
def acks_late_only() -> None:
    """Acknowledged late; Celery still acknowledges it when its pool process dies."""


@tasks.app.task(name="morag_test.plugin.requeued_if_lost", acks_late=True,
                reject_on_worker_lost=True, shared=False)
def requeued_if_lost() -> None:
    """Acknowledged late and requeued by Celery when its pool process dies."""


@pytest.mark.parametrize(("task", "expected"), [
    (tasks.count_up, False), (acks_late_only, False), (requeued_if_lost, True),
], ids=["plain", "acks_late", "acks_late+reject_on_worker_lost"])
def test_a_started_job_records_whether_celery_would_deliver_its_task_again(
    task: Task, expected: bool, worker: InProcessWorker, store: JobStore
) -> None:
    """What the reaper reads when the job's heartbeat stops: wait for a redelivery, or fail."""
    job = submit(task, (1,) if task is tasks.count_up else ())
    done = wait_for_job(store, job.id, finished, "the job to end")
    assert done.metadata.get("redelivery_expected") is expected, done.metadata


def test_tasks_that_do_not_say_follow_the_apps_task_settings() -> None:
    app = Celery("morag_test_settings", set_as_current=False)
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)

    @app.task(name="settings.inherits", shared=False)
    def inherits() -> None: ...

    @app.task(name="settings.overrides", shared=False, reject_on_worker_lost=False)
    def overrides() -> None: ...

    assert _redelivered_if_lost(inherits), "expected the app's acks_late + reject to apply"
    assert not _redelivered_if_lost(overrides), "expected the task's own setting to win"


def test_a_task_retried_when_its_worker_is_lost_expects_a_redelivery_while_retries_remain(
) -> None:
    app = Celery("morag_test_retry_settings", set_as_current=False)
    app.conf.update(task_retry_on_worker_lost=True)

    @app.task(name="settings.retried", shared=False, max_retries=3)
    def retried() -> None: ...

    @app.task(name="settings.out_of_retries", shared=False, max_retries=0)
    def out_of_retries() -> None: ...

    assert _redelivered_if_lost(retried), "expected a retry while retries remain"
    assert not _redelivered_if_lost(out_of_retries), "expected no retry with none left"


# -- progress that nobody reported on purpose: the log tap -----------------------------------


@pytest.mark.parametrize("via", ["stdlib", "celery"])
def test_a_task_that_only_logs_a_progress_line_moves_its_job(
    via: str, worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.log_line, ("Processing... 75%", via))
    wait_for_job(store, job.id, finished, "the job to end")
    rows = history(store, job.id, "progress")
    progress = [e.percentage for e in rows]
    assert progress == [75.0], (
        f"expected the logged 'Processing... 75%' ({via} logger) to move the job: {progress}")
    row = rows[0]
    assert (row.source, row.format) == ("log", "morag.ellipsis"), (
        "the history says the line came from the log, and which format read it")
    assert row.reported_at is not None and row.reported_at <= row.at, (
        "the line's own time, not the time it was written")


def test_a_logged_line_that_is_not_progress_leaves_the_job_alone(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.log_line, ("CPU usage 95%", "celery"))
    wait_for_job(store, job.id, finished, "the job to end")
    assert history(store, job.id, "progress") == [], "expected 'CPU usage 95%' to be ignored"


@pytest.mark.parametrize("via", ["log", "command"])
def test_install_pattern_dirs_reach_the_parser_of_the_log_tap_and_of_commands(
    via: str, worker: InProcessWorker, store: JobStore
) -> None:
    """``install(app, pattern_dirs=[...])``: a format only that pack reads moves the job."""
    line = "cooked 3 pies of 4"
    if via == "log":
        job = submit(tasks.log_line, (line,))
    else:
        job = submit(tasks.run_script, (f"print({line!r})",))
    wait_for_job(store, job.id, finished, "the job to end")
    rows = history(store, job.id, "progress")
    seen = [(e.percentage, e.format) for e in rows]
    assert seen == [(75.0, "test.bakery")], (
        f"expected {line!r} ({via}) read by tests/packs/bakery.toml as 75%, got {seen}")


# -- stages and subprocesses ------------------------------------------------------------------


def test_nested_stages_fill_their_parents_steps(worker: InProcessWorker, store: JobStore) -> None:
    job = submit(tasks.nested_stages, (3,), job_type=AUDIO, stages=AUDIO_PLAN)
    done = wait_for_job(store, job.id, finished, "the job to end")
    assert done.status is JobStatus.FINISHED, done.error
    progress = history(store, job.id, "progress")
    processing = [e.percentage for e in progress if e.stage == "processing"]
    assert processing and all(10.0 < p <= 70.0 for p in processing), describe(progress)
    assert processing == sorted(processing) and len(processing) >= 3, (
        f"expected the chunks to move processing forward step by step: {describe(progress)}")


def test_an_exception_inside_a_nested_stage_fails_the_job_with_the_stage_path(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.nested_stages, (3, 2), job_type=AUDIO, stages=AUDIO_PLAN)
    done = wait_for_job(store, job.id, finished, "the job to end")
    assert done.status is JobStatus.FAILED, f"expected FAILED, got {done.status}"
    assert done.error == "stage processing/chunk 2 failed: ValueError: chunk 2 is corrupt", (
        done.error)
    assert done.percentage == pytest.approx(40.0), (
        f"expected chunk 2 of 3 half done (40% overall) to be kept, got {done.percentage}")


def test_run_with_progress_moves_the_job_with_a_subprocess_tqdm_bar(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.run_script, (tasks.TQDM_SCRIPT, "processing"), job_type=AUDIO,
                 stages=AUDIO_PLAN)
    done = wait_for_job(store, job.id, finished, "the job to end", timeout=20)
    assert done.status is JobStatus.FINISHED, done.error
    progress = [e.percentage for e in history(store, job.id, "progress")]
    assert progress and all(10.0 <= p <= 70.0 for p in progress), (
        f"expected the bar's updates on the processing band 10..70: {progress}")
    assert any(10.0 < p < 70.0 for p in progress), (
        f"expected the bar's '\\r' updates to move the job step by step: {progress}")
    assert progress[-1] == 70.0, f"expected the bar's 100% to end processing (70%): {progress}"


def test_a_failing_command_fails_the_job_with_the_tail_of_its_stderr(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.run_script, (tasks.FAILING_SCRIPT,))
    done = wait_for_job(store, job.id, finished, "the job to end", timeout=20)
    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.startswith("CommandFailed: "), done.error
    assert "exit status 3" in done.error and "error: model file is truncated" in done.error, (
        f"expected the exit status and the stderr tail in the error: {done.error}")


# -- interop with celery-progress -------------------------------------------------------------


def test_a_running_task_shows_celery_progress_state_in_the_result_backend(
    worker: InProcessWorker, store: JobStore
) -> None:
    job = submit(tasks.count_up, (10, 0.1))
    result = AsyncResult(job.metadata["task_id"], app=tasks.app)
    deadline = time.monotonic() + 10
    while result.state != "PROGRESS" and time.monotonic() < deadline:
        time.sleep(0.02)
    info = result.info
    assert result.state == "PROGRESS", f"expected PROGRESS while it runs, got {result.state}"
    assert isinstance(info, dict) and 0 < info["percent"] < 100, (
        f"expected celery-progress's meta with a percent, got {info!r}")
    assert set(info) >= {"pending", "current", "total", "percent", "description"}, info
    assert result.get(timeout=15) == 10
    assert result.state == "SUCCESS"


def test_celery_progress_sees_the_jobs_overall_percentage_never_going_back(
    worker: InProcessWorker, store: JobStore
) -> None:
    """celery-progress's own ``Progress(...).get_info()`` over a staged task.

    Version 0 mirrored the percentage within the current stage: a client saw 100 (the
    download stage done), then 20, 40 ... of the processing stage, then 50 of indexing.
    """
    job = submit(tasks.transcribe, (6, 0.15), job_type=AUDIO, stages=AUDIO_PLAN)
    result = AsyncResult(job.metadata["task_id"], app=tasks.app)
    seen: list[float] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = Progress(result).get_info()
        if info["complete"]:
            break
        if info["state"] == "PROGRESS":
            seen.append(info["progress"]["percent"])
        time.sleep(0.02)
    assert info["complete"] and info["success"], info
    assert len(set(seen)) >= 3, f"expected the bar to move through the stages: {seen}"
    assert seen == sorted(seen), f"celery-progress saw the bar go back: {seen}"
    assert min(seen) < 70.0 <= max(seen), (
        f"expected overall percentages across the processing band (10..70): {seen}")


def test_a_cancelled_job_stops_its_task_at_the_next_report_as_revoked(
    worker: InProcessWorker, store: JobStore, job_db: str
) -> None:
    """Cancelled from another process (the API, the CLI): the task learns it from the row
    its own flusher writes and stops at its next report, REVOKED, not FAILURE."""
    job = submit(tasks.until_cancelled, (600, 0.02))
    running = wait_for_job(store, job.id, lambda j: j.percentage > 1.0, "progress")
    with JobStore(job_db) as elsewhere_store:
        elsewhere = ProgressHandler(elsewhere_store)
        assert elsewhere.handle_job_cancellation(job.id, "cancelled from the dashboard")
        elsewhere.close()
    deadline = time.monotonic() + 10
    while job.async_result.state != "REVOKED" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.async_result.state == "REVOKED", (
        f"expected the task to stop as REVOKED, got {job.async_result.state}")
    done = store.require_job(job.id)
    assert done.status is JobStatus.CANCELLED and done.summary == "cancelled from the dashboard"
    assert running.percentage <= done.percentage < 100.0, "the percentage reached is kept"
    assert history(store, job.id)[-1].kind == "cancellation", (
        "nothing written after the cancellation: late reports are only counted")


def test_a_group_is_one_parent_job_climbing_to_finished(
    worker: InProcessWorker, store: JobStore
) -> None:
    canvas = group(tasks.count_up.s(3, 0.02) for _ in range(5))
    parent = submit(canvas, name="five counts", weights=[1, 1, 1, 1, 4])
    assert (parent.children, parent.children_weight, parent.job_type) == (5, 8.0, "group")
    kids = Family(store).children(parent.id)
    assert [k.name for k in kids] == [tasks.count_up.name] * 5
    assert [k.weight for k in kids] == [1.0, 1.0, 1.0, 1.0, 4.0]
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = store.require_job(parent.id)
        seen.append(now.percentage)
        if now.status.is_terminal:
            break
        time.sleep(0.02)
    assert now.status is JobStatus.FINISHED and seen[-1] == 100.0, now
    assert seen == sorted(seen) and len(set(seen)) > 3, f"climbing, never back: {seen}"
    assert parent.async_result.get(timeout=10) == [3, 3, 3, 3, 3]


def test_a_failed_chain_member_fails_the_parent_with_its_error(
    worker: InProcessWorker, store: JobStore
) -> None:
    parent = submit(chain(tasks.report_once.si(20.0), tasks.fail_after.si(40.0),
                          tasks.report_once.si(90.0)))
    done = wait_for_job(store, parent.id, finished, "the chain's parent to end", timeout=20)
    assert done.status is JobStatus.FAILED
    assert done.error == f"{tasks.fail_after.name} FAILED: ValueError: corrupt input file"
    statuses = [k.status for k in Family(store).children(parent.id)]
    assert statuses[:2] == [JobStatus.FINISHED, JobStatus.FAILED]
    assert statuses[2] is JobStatus.PENDING, "the chain stopped: its last task never ran"


def test_a_chord_whose_header_fails_fails_its_parent_at_once(
    worker: InProcessWorker, store: JobStore
) -> None:
    parent = submit(chord([tasks.report_once.si(10.0), tasks.fail_after.si(30.0)],
                          tasks.report_once.si(99.0)))
    assert parent.children == 3, "two header tasks and the body"
    done = wait_for_job(store, parent.id, finished, "the chord's parent to end", timeout=20)
    assert done.status is JobStatus.FAILED
    assert done.error == f"{tasks.fail_after.name} FAILED: ValueError: corrupt input file"
    body = Family(store).children(parent.id)[-1]
    assert body.status is JobStatus.PENDING, "the body never runs after a header failure"


# -- a worker at its default log level ------------------------------------------------------


def test_the_log_tap_hears_info_progress_lines_at_the_workers_default_log_level(
    quiet_worker: InProcessWorker, store: JobStore
) -> None:
    """"No code change" includes the worker's command line: its default level is WARNING."""
    job = submit(tasks.log_line, ("Processing... 75%", "celery"))
    wait_for_job(store, job.id, finished, "the job to end")
    progress = [e.percentage for e in history(store, job.id, "progress")]
    assert progress == [75.0], (
        f"expected logger.info('Processing... 75%') to move the job under a worker at "
        f"--loglevel WARNING (Celery's default), got {progress}")


# -- the threads pool: several tasks at once --------------------------------------------------


def test_the_threads_pool_runs_several_jobs_each_with_its_own_progress(
    threads_worker: InProcessWorker, store: JobStore
) -> None:
    jobs = [submit(tasks.count_up, (steps, 0.2)) for steps in (3, 4, 6, 9)]
    ended = [wait_for_job(store, job.id, finished, "the job to end") for job in jobs]
    # Side by side: every job started before the first one ended.
    first_end = min(job.finished_at for job in ended if job.finished_at is not None)
    late = [job.id for job in ended if job.started_at is None or job.started_at >= first_end]
    assert not late, f"expected the 4 threads to run all jobs at once; started late: {late}"
    for job, steps in zip(jobs, (3, 4, 6, 9), strict=True):
        done = wait_for_job(store, job.id, finished, "the job to end")
        assert done.status is JobStatus.FINISHED
        progress = [e.percentage for e in history(store, job.id, "progress")]
        own = {round(step * 100.0 / (steps + 1), 6) for step in range(1, steps + 1)}
        assert progress and {round(p, 6) for p in progress} <= own, (
            f"expected job {steps} to hold only its own percentages {sorted(own)}: {progress}")


def test_threads_pool_tasks_report_from_their_own_thread_context(
    threads_worker: InProcessWorker, store: JobStore
) -> None:
    results = [tasks.report_once.delay(float(p)) for p in (10, 20, 30)]
    ids = [r.get(timeout=10) for r in results]
    assert ids == [r.id for r in results], "expected each thread to see its own job id"
    for result, percent in zip(results, (10.0, 20.0, 30.0), strict=True):
        wait_for_job(store, result.id, finished, "the job to end")
        assert [e.percentage for e in history(store, result.id, "progress")] == [percent]
