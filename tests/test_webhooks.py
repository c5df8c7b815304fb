"""Completion webhooks: the durable outbox, signed delivery, retries, give-up, restart.

Deliveries go to a real HTTP receiver on 127.0.0.1 and every signature is checked with
the ``standardwebhooks`` package, an independent Standard Webhooks implementation.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook

from morag_jobs import webhooks as wh
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStore
from morag_jobs.store.models import WebhookDeliveryRow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = {"base_delay": 0.05, "max_delay": 0.2, "timeout": 5.0, "allow_private": True}
"""Quick retries; and the receivers here are on 127.0.0.1, which needs the operator's leave."""
Respond = Callable[[BaseHTTPRequestHandler, int], None]
"""A receiver's answer: given the request handler and the request's number (from 1)."""


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP receiver that answers ``fail_first`` requests with 500, then 200.

    With ``respond``, that answers instead (a slow, trickling or huge answer).
    """

    fail_first: int = 0
    respond: Respond | None = None
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def serve(self, port: int = 0) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(Received(dict(self.headers), body, time.monotonic()))
                if receiver.respond is not None:
                    receiver.respond(self, len(receiver.requests))
                    return
                failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"receiver is failing on purpose" if failing else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().serve()
    yield running
    running.close()


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as job_store:
        yield job_store


@pytest.fixture
def handler(store: JobStore) -> Iterator[ProgressHandler]:
    progress = ProgressHandler(store=store, interval=0)
    progress.add_listener(wh.outbox_listener(store))
    yield progress
    progress.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def deliver_until(
    deliverer: wh.WebhookDeliverer, done: Callable[[], bool], timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "deliveries did not settle in time"
        deliverer.deliver_due()
        time.sleep(0.01)


def settled(store: JobStore) -> Callable[[], bool]:
    return lambda: not wh.list_deliveries(store, status="pending")


def verified(request: Received) -> dict[str, Any]:
    """The body, checked by the standardwebhooks package (raises if the signature is bad)."""
    payload: dict[str, Any] = Webhook(SECRET).verify(request.body, request.headers)
    return payload


def test_a_failing_receiver_gets_the_delivery_after_retries_with_backoff(
    store: JobStore, handler: ProgressHandler, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    job = store.create_job(name="talk.mp3", job_type="audio", webhook_url=receiver.url)
    assert handler.handle_job_completion(job.id, True, "transcribed")
    with wh.WebhookDeliverer(store, secret=SECRET, **FAST) as deliverer:
        deliver_until(deliverer, settled(store))

    (row,) = wh.list_deliveries(store, job_id=job.id)
    assert (row.status, row.attempts, row.response_status) == ("delivered", 3, 200), row
    assert row.delivered_at is not None
    assert len(receiver.requests) == 3, "expected two 500s, then the delivery"
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert all(gap >= 0.025 for gap in gaps), f"retries came without backoff: {gaps}"
    assert {r.headers["webhook-id"] for r in receiver.requests} == {row.message_id}
    payload = verified(receiver.requests[-1])
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job.id
    assert payload["data"]["status"] == "FINISHED"
    assert payload["data"]["percentage"] == 100.0


def test_a_receiver_that_is_down_is_retried_until_it_comes_up(
    store: JobStore, handler: ProgressHandler
) -> None:
    port = free_port()
    job = store.create_job(job_type="video", webhook_url=f"http://127.0.0.1:{port}/hook")
    assert handler.handle_job_completion(job.id, False, "ffmpeg exited with 1")
    deliverer = wh.WebhookDeliverer(store, secret=SECRET, **FAST)
    deliverer.deliver_due()
    (row,) = wh.list_deliveries(store, job_id=job.id)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error is not None and "ConnectError" in row.last_error, row.last_error

    late = Receiver().serve(port)
    try:
        deliver_until(deliverer, settled(store))
    finally:
        deliverer.stop()
        late.close()
    (row,) = wh.list_deliveries(store, job_id=job.id)
    assert row.status == "delivered", row
    payload = verified(late.requests[-1])
    assert payload["type"] == "job.failed"
    assert payload["data"]["error"] == "ffmpeg exited with 1"


def test_delivery_gives_up_after_max_attempts_and_records_why(
    store: JobStore, handler: ProgressHandler, receiver: Receiver
) -> None:
    receiver.fail_first = 1000
    job = store.create_job(webhook_url=receiver.url)
    assert handler.handle_job_cancellation(job.id, "revoked by user")
    with wh.WebhookDeliverer(store, secret=SECRET, max_attempts=3, **FAST) as deliverer:
        deliver_until(deliverer, settled(store))

    (row,) = wh.list_deliveries(store, job_id=job.id, status="failed")
    assert row.attempts == 3 and len(receiver.requests) == 3
    assert row.last_error is not None
    assert "gave up after 3 attempts" in row.last_error, row.last_error
    assert "HTTP 500: receiver is failing on purpose" in row.last_error, row.last_error
    assert verified(receiver.requests[0])["type"] == "job.cancelled"


def test_an_unusable_url_fails_at_once_with_the_reason(
    store: JobStore, handler: ProgressHandler
) -> None:
    job = store.create_job(webhook_url="ftp://example.invalid/hook")
    assert handler.handle_job_completion(job.id, True)
    wh.WebhookDeliverer(store, secret=SECRET, **FAST).deliver_due()
    (row,) = wh.list_deliveries(store, job_id=job.id)
    assert (row.status, row.attempts) == ("failed", 1), row
    assert row.last_error == "refused: the scheme must be http or https, not 'ftp'", row


def test_a_new_deliverer_picks_up_pending_rows_after_a_restart(
    database_url: str, receiver: Receiver
) -> None:
    receiver.fail_first = 1
    with JobStore(database_url, create_tables=True) as first:
        job = first.create_job(job_type="audio", webhook_url=receiver.url)
        handler = ProgressHandler(store=first, interval=0)
        handler.add_listener(wh.outbox_listener(first))
        assert handler.handle_job_completion(job.id, True, "done")
        handler.close()
        before = wh.WebhookDeliverer(first, secret=SECRET, **FAST)
        assert before.deliver_due() == 1
        before.stop()
    assert len(receiver.requests) == 1

    with JobStore(database_url) as second:  # a new process: only the database is shared
        deliverer = wh.WebhookDeliverer(second, secret=SECRET, **FAST)
        deliver_until(deliverer, settled(second))
        deliverer.stop()
        (row,) = wh.list_deliveries(second, job_id=job.id)
    assert (row.status, row.attempts) == ("delivered", 2)
    assert verified(receiver.requests[-1])["data"]["id"] == job.id


def test_per_type_endpoint_and_per_job_url_both_receive(
    store: JobStore, handler: ProgressHandler, receiver: Receiver
) -> None:
    per_type = wh.register_endpoint(store, "audio", receiver.url + "/audio")
    assert wh.register_endpoint(store, "audio", receiver.url + "/audio") == per_type
    wh.register_endpoint(store, "video", receiver.url + "/video")
    job = store.create_job(job_type="audio", webhook_url=receiver.url + "/job")
    assert handler.handle_job_completion(job.id, True)
    with wh.WebhookDeliverer(store, secret=SECRET, **FAST) as deliverer:
        deliver_until(deliverer, settled(store))

    rows = wh.list_deliveries(store, job_id=job.id, status="delivered")
    assert sorted(row.url.rsplit("/", 1)[1] for row in rows) == ["audio", "job"]
    assert len(receiver.requests) == 2, "the video endpoint must not hear of an audio job"
    assert {verified(request)["data"]["id"] for request in receiver.requests} == {job.id}


def test_a_job_end_is_queued_once_per_url(store: JobStore, receiver: Receiver) -> None:
    wh.register_endpoint(store, "audio", receiver.url)
    job = store.create_job(job_type="audio", webhook_url=receiver.url + "/job")
    listener = wh.outbox_listener(store)
    ended = store.update_job(job.id, lambda j: ({"status": "FINISHED"}, None))
    assert ended is not None
    listener("updated", ended)
    assert wh.list_deliveries(store) == [], "progress updates queue nothing"
    listener("completed", ended)
    listener("completed", ended)  # e.g. the handler calling its listeners again
    assert wh.enqueue(store, "completed", ended) == 0
    assert len(wh.list_deliveries(store, job_id=job.id)) == 2


def test_the_listener_never_raises_when_the_outbox_insert_fails(
    store: JobStore, handler: ProgressHandler
) -> None:
    job = store.create_job(webhook_url="http://127.0.0.1:9/hook")
    table = WebhookDeliveryRow.__table__
    table.drop(store.engine)  # type: ignore[attr-defined]
    try:
        assert handler.handle_job_completion(job.id, True, "done"), "completion must land"
        assert handler.stats.listener_errors == 0, "the listener raised into the handler"
        listener = wh.OutboxListener(store)
        snapshot = store.require_job(job.id)
        listener("completed", snapshot)  # no table: logged, kept, never raised
        assert listener.backlog == 1
    finally:
        table.create(store.engine)  # type: ignore[attr-defined]
    other = store.create_job(webhook_url="http://127.0.0.1:9/other")
    ended = store.update_job(other.id, lambda j: ({"status": "FAILED"}, None))
    assert ended is not None
    listener("failed", ended)
    assert listener.backlog == 0
    assert {row.job_id for row in wh.list_deliveries(store)} == {job.id, other.id}


def test_two_deliverers_at_once_deliver_each_message_once(
    store: JobStore, handler: ProgressHandler, receiver: Receiver
) -> None:
    jobs = [store.create_job(webhook_url=receiver.url) for _ in range(12)]
    for job in jobs:
        assert handler.handle_job_completion(job.id, True)
    deliverers = [wh.WebhookDeliverer(store, secret=SECRET, batch_size=4, **FAST)
                  for _ in range(2)]
    threads = [threading.Thread(target=deliver_until, args=(d, settled(store)))
               for d in deliverers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert len(ids) == len(set(ids)) == 12, f"each message exactly once, got {len(ids)}"
    assert all(row.attempts == 1 for row in wh.list_deliveries(store))


def test_the_background_thread_delivers_without_being_asked(
    store: JobStore, handler: ProgressHandler, receiver: Receiver
) -> None:
    deliverer = wh.WebhookDeliverer(store, secret=SECRET, poll_interval=0.05, **FAST)
    deliverer.start()
    try:
        job = store.create_job(webhook_url=receiver.url)
        assert handler.handle_job_completion(job.id, True)
        deadline = time.monotonic() + 10
        while not receiver.requests:
            assert time.monotonic() < deadline, "the deliverer thread sent nothing"
            time.sleep(0.02)
    finally:
        deliverer.stop()
    assert verified(receiver.requests[0])["data"]["id"] == job.id


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_signature_is_what_standard_webhooks_computes() -> None:
    key = wh.parse_secret(SECRET)
    body = json.dumps({"type": "job.completed", "data": {"id": "j1"}})
    headers = wh.signature_headers(key, "msg_1", body, timestamp=int(time.time()))
    reference = Webhook(SECRET).sign("msg_1", _utc(int(headers["webhook-timestamp"])), body)
    assert headers["webhook-signature"] == reference
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    assert len(wh.parse_secret(wh.generate_secret())) == 32


def test_bad_secrets_and_urls_are_refused_with_what_to_do(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        wh.parse_secret("whsec_not base64!")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        wh.parse_secret("whsec_c2hvcnQ=")
    monkeypatch.delenv("MORAG_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ValueError, match="MORAG_WEBHOOK_SECRET"):
        wh.WebhookDeliverer(store)
    monkeypatch.setenv("MORAG_WEBHOOK_SECRET", SECRET)
    wh.WebhookDeliverer(store).stop()
    with pytest.raises(ValueError, match="http"):
        wh.register_endpoint(store, "audio", "file:///etc/passwd")
    with pytest.raises(ValueError, match="one of pending, delivered, failed"):
        wh.list_deliveries(store, status="lost")


def test_endpoints_can_be_listed_and_removed(store: JobStore) -> None:
    audio = wh.register_endpoint(store, "audio", "https://example.com/a")
    video = wh.register_endpoint(store, "video", "https://example.com/v")
    assert wh.list_endpoints(store) == [audio, video]
    assert wh.list_endpoints(store, "video") == [video]
    assert wh.remove_endpoint(store, audio.id)
    assert not wh.remove_endpoint(store, audio.id)
    assert wh.list_endpoints(store) == [video]


def test_cli_adds_lists_removes_endpoints_and_shows_deliveries(sqlite_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "morag_jobs", "webhooks", *args, "--database", sqlite_url],
            capture_output=True, text=True, timeout=60, check=False,
        )

    added = run("add", "audio", "https://example.com/hook")
    assert added.returncode == 0, added.stderr
    endpoint_id = added.stdout.split("\t")[0]
    assert added.stdout == f"{endpoint_id}\taudio\thttps://example.com/hook\n"
    assert json.loads(run("list", "--json").stdout)["job_type"] == "audio"
    with JobStore(sqlite_url) as store:
        job = store.create_job(job_type="audio")
        ended = store.update_job(job.id, lambda j: ({"status": "FINISHED"}, None))
        assert ended is not None
        wh.outbox_listener(store)("completed", ended)
    (line,) = run("deliveries", "--status", "pending").stdout.splitlines()
    assert line.split("\t")[1:6] == [job.id, "completed", "pending", "0",
                                     "https://example.com/hook"]
    bad = run("deliveries", "--status", "lost")
    assert bad.returncode == 2 and "one of pending" in bad.stderr
    with JobStore(sqlite_url) as store:
        assert wh.remove_endpoint(store, int(endpoint_id))
    missing = run("remove", endpoint_id)
    assert missing.returncode == 1 and "no webhook endpoint" in missing.stderr
