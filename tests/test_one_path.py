"""Every change of a job goes through the handler, so every listener sees every change.

The reaper, the API's completion route and a job's creation used to write the store
directly: listeners (the webhook outbox, the API's cache, the mirror) missed them, and the
reaper queued webhooks by hand. Here a plain listener is attached and each path is
driven for real, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from api_helpers import running_api

from morag_jobs.events import utc_now
from morag_jobs.handler import ProgressHandler
from morag_jobs.reaper import reap_pass
from morag_jobs.store import Job, JobStatus, JobStore
from morag_jobs.webhooks import list_deliveries


class Heard:
    """A listener that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, JobStatus]] = []

    def __call__(self, event_type: str, job: Job) -> None:
        self.calls.append((event_type, job.id, job.status))

    def of(self, job_id: str) -> list[tuple[str, JobStatus]]:
        return [(kind, status) for kind, jid, status in self.calls if jid == job_id]


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as store:
        yield store


def test_a_reaped_job_reaches_every_listener(store: JobStore) -> None:
    handler, heard = ProgressHandler(store), Heard()
    handler.add_listener(heard)
    job = handler.create_job(name="silent", webhook_url="https://example.com/hook")
    handler.handle_job_start(job.id, worker="w1")
    done = reap_pass(handler, 60.0, now=utc_now() + timedelta(seconds=600))
    assert [j.id for j in done.reaped] == [job.id]
    assert heard.of(job.id)[-1] == ("failed", JobStatus.FAILED), heard.calls
    queued = list_deliveries(store, job.id)
    assert [d.event_type for d in queued] == ["failed"], (
        "the outbox queued it through its ordinary listener, once")
    handler.close()


def test_a_reap_pass_on_a_bare_store_still_queues_the_webhook(store: JobStore) -> None:
    """`morag-jobs reap` passes a store: a handler is made for the pass, outbox included."""
    job = store.create_job(name="silent", webhook_url="https://example.com/hook")
    ProgressHandler(store).handle_job_start(job.id, worker="w1")
    reap_pass(store, 60.0, now=utc_now() + timedelta(seconds=600))
    assert [d.event_type for d in list_deliveries(store, job.id)] == ["failed"]


def test_an_api_completion_reaches_every_listener_in_one_write(database_url: str) -> None:
    with running_api(database_url) as api:
        heard = Heard()
        api.handler.add_listener(heard)
        worker = api.key("worker", "gpu-01")
        job = api.job(name="remote")
        api.handler.register_job_mapping("gpu-01", job.id)
        response = api.complete(job.id, worker, success=True, result={"words": 3})
        assert response.status_code == 200, response.text
        assert heard.of(job.id) == [("completed", JobStatus.FINISHED)], (
            "one change, seen once: the result and the completing worker are in its write")
        ended = api.store.require_job(job.id)
        assert ended.metadata["result"] == {"words": 3} and ended.worker_id == "gpu-01"


def test_a_created_job_reaches_every_listener(store: JobStore) -> None:
    handler, heard = ProgressHandler(store), Heard()
    handler.add_listener(heard)
    job = handler.create_job(name="new")
    assert heard.of(job.id) == [("created", JobStatus.PENDING)]
    handler.close()
