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
