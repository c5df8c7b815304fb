"""Cancellation delivered through the progress call, without a task framework.

A job ended elsewhere (the API, the CLI, another process's handler) is learned by the
runtime's flusher from the rows it writes (progress) and from heartbeats (code that
only checks ``is_cancelled()``); the task's next report raises ``JobCancelled``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from morag_jobs.errors import JobCancelled
from morag_jobs.events import ProgressEvent
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStatus, JobStore
from morag_jobs.task import (
    Runtime,
    RuntimeConfig,
    is_cancelled,
    job_context,
    report_progress,
    stage,
)
from morag_jobs.task.context import bind, unbind


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, migrate=True) as job_store:
        yield job_store


@pytest.fixture
def runtime(database_url: str, store: JobStore) -> Iterator[Runtime]:
    running = Runtime(RuntimeConfig(database_url=database_url, interval=0.05,
                                    heartbeat_interval=0.1, reap_timeout=None))
    yield running
    running.close()


def cancel_elsewhere(store: JobStore, job_id: str) -> None:
    other = ProgressHandler(store)
    assert other.handle_job_cancellation(job_id, "stop")
    other.close()


def until(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_the_next_report_raises_and_except_exception_does_not_hide_it(
    store: JobStore, runtime: Runtime
) -> None:
    job = store.create_job(name="loop")
    reports = 0
    with pytest.raises(JobCancelled) as stopped, job_context(job.id, runtime=runtime):
        report_progress(5.0)
        runtime.flush()
        cancel_elsewhere(store, job.id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                report_progress(10.0 + reports * 0.01)
            except Exception:
                continue
            reports += 1
            time.sleep(0.01)
    assert stopped.value.job_id == job.id and stopped.value.reason == "was cancelled"
    assert isinstance(stopped.value, BaseException) and not isinstance(stopped.value, Exception)
    ended = store.require_job(job.id)
    assert ended.status is JobStatus.CANCELLED and ended.percentage >= 5.0


def test_is_cancelled_learns_it_from_heartbeats_without_any_report(
    store: JobStore, runtime: Runtime
) -> None:
    job = store.create_job(name="quiet")
    with job_context(job.id, runtime=runtime):
        report_progress(1.0)
        runtime.flush()
        assert not is_cancelled()
        cancel_elsewhere(store, job.id)
        until(is_cancelled)
        assert is_cancelled(), "a heartbeat saw the job CANCELLED"
    assert not is_cancelled(), "outside a job: False"


def test_a_stage_boundary_stops_the_task_without_failing_the_job(
    store: JobStore, runtime: Runtime
) -> None:
    job = store.create_job(name="staged")
    with pytest.raises(JobCancelled), job_context(job.id, runtime=runtime):
        with stage("download"):
            report_progress(50.0)
            runtime.flush()
            cancel_elsewhere(store, job.id)
            until(is_cancelled)
        with stage("processing"):  # the boundary: entering reports, which raises
            raise AssertionError("the next stage must not start")
    ended = store.require_job(job.id)
    assert ended.status is JobStatus.CANCELLED, "a cancelled stage is not a failed job"
    assert ended.error is None


def test_an_older_attempt_is_fenced_off_and_learns_it_at_its_next_report(
    store: JobStore, runtime: Runtime
) -> None:
    """Two runs of one task (a redelivery while the first worker was only partitioned):
    the older attempt's progress and completion are refused and counted, and it stops."""
    job = store.create_job(name="redelivered")
    context = runtime.begin(job.id, "t-1")
    runtime.start(context, worker="w1@old", redelivery_ok=True)
    assert context.attempt == 1
    newer = ProgressHandler(store, interval=0)
    second = newer.handle_job_start(job.id, worker="w2@new", redelivery_ok=True)
    assert second is not None and second.attempt == 2
    newer.apply(ProgressEvent(percent=30.0, attempt=2), job.id, immediate=True)
    token = bind(context)
    try:
        report_progress(90.0, message="the old run goes on")
        runtime.flush()
        until(lambda: context.cancelled is not None)
        assert context.cancelled == "superseded by attempt 2"
        with pytest.raises(JobCancelled, match="superseded by attempt 2"):
            report_progress(95.0)
    finally:
        unbind(token)
    runtime.complete(context, True, "the old run finished")
    now = store.require_job(job.id)
    assert (now.status, now.percentage, now.attempt) == (JobStatus.PROCESSING, 30.0, 2), (
        "neither the old run's progress nor its completion landed")
    assert now.ignored_count >= 1, "refused reports are counted on the job"
    assert newer.handle_job_completion(job.id, True, "done", attempt=2)
    assert store.require_job(job.id).status is JobStatus.FINISHED
    newer.close()
