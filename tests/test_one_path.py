"""Every change of a job goes through the handler, so every listener sees every change.

The reaper, the API's completion route and a job's creation used to write the store
directly: listeners (the webhook outbox, the API's cache, the mirror) missed them, and the
reaper queued webhooks by hand. Here a plain listener is attached and each path is
driven for real, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from api_helpers import running_api

from morag_jobs.events import utc_now
from morag_jobs.handler import ProgressHandler
from morag_jobs.reaper import reap_pass
from morag_jobs.store import Job, JobStatus, JobStore
from morag_jobs.webhooks import attach_outbox, list_deliveries


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
    handler, heard = attach_outbox(ProgressHandler(store)), Heard()
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


def test_a_handler_has_no_listener_its_assembly_did_not_attach(store: JobStore) -> None:
    """Listeners are attached where the app is assembled, not inside the handler."""
    handler = ProgressHandler(store)
    assert handler.listeners == ()
    assert attach_outbox(attach_outbox(handler)) is handler
    assert [type(listener).__name__ for listener in handler.listeners] == ["OutboxListener"], (
        "attached once, however often it is asked")
    handler.close()


@pytest.mark.parametrize("command", [
    ["reap", "--timeout", "60"],
    ["cancel", "{job}"],
])
def test_every_cli_assembly_queues_the_webhook_of_a_job_it_ends(
    store: JobStore, database_url: str, command: list[str]
) -> None:
    """`morag-jobs reap` and `morag-jobs cancel` end jobs in their own process: their
    handler is assembled with the outbox, so the job's webhook is queued."""
    job = store.create_job(name="silent", webhook_url="https://example.com/hook")
    ProgressHandler(store).handle_job_start(job.id, worker="w1")
    old = utc_now() - timedelta(minutes=10)
    store.update_job(job.id, lambda j: ({"heartbeat_at": old, "last_progress_at": old}, None))
    args = [part.format(job=job.id) for part in command]
    done = subprocess.run([sys.executable, "-m", "morag_jobs", *args, "--database", database_url],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    ended = store.require_job(job.id).status
    assert ended in (JobStatus.FAILED, JobStatus.CANCELLED)
    expected = "failed" if ended is JobStatus.FAILED else "cancelled"
    assert [d.event_type for d in list_deliveries(store, job.id)] == [expected]


def test_an_api_completion_reaches_every_listener_in_one_write(database_url: str) -> None:
    with running_api(database_url) as api:
        heard = Heard()
        api.handler.add_listener(heard)
        worker = api.key("worker", "gpu-01")
        job = api.job(name="remote")
        api.handler.mappings.bind("worker", "gpu-01", job.id)
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
