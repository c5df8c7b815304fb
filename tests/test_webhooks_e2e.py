"""Webhooks end to end: a job completed through the API reaches a receiver, signed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from morag_jobs import webhooks as wh
from tests.api_helpers import running_api
from tests.test_webhooks import SECRET, Receiver, verified


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver(fail_first=1).serve()
    yield running
    running.close()


def test_a_completion_through_the_api_is_delivered_by_the_servers_deliverer(
    database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MORAG_WEBHOOK_ALLOW_PRIVATE", "1")  # the receiver is on 127.0.0.1
    with running_api(database_url, webhook_secret=SECRET) as api:
        admin = api.key("admin")
        job = api.job(name="e2e", webhook_url=receiver.url)
        assert api.complete(job.id, admin, success=True, message="done").status_code == 200
        deadline = time.monotonic() + 20
        while not wh.list_deliveries(api.store, job_id=job.id, status="delivered"):
            assert time.monotonic() < deadline, (
                f"the server's deliverer did not deliver in time: {wh.list_deliveries(api.store)}")
            time.sleep(0.1)
    payload = verified(receiver.requests[-1])
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job.id and payload["data"]["status"] == "FINISHED"
    assert len(receiver.requests) >= 2, "the first attempt failed on purpose and was retried"
