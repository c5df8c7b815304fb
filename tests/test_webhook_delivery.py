"""Webhook delivery against receivers that misbehave: huge, trickling, slow, or blocking.

Every receiver is a real HTTP server on 127.0.0.1 (so every deliverer here is allowed
private addresses). Waits are on events the receivers set, not on timings.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import cast

import pytest
from sqlalchemy import Table, update

from morag_jobs import webhooks as wh
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import Job, JobStore
from morag_jobs.store.models import WebhookDeliveryRow
from tests.test_webhooks import FAST, SECRET, Receiver, deliver_until, settled, verified

WAIT = 20.0
"""The longest any test waits for something that should happen at once."""


@dataclass
class Gate:
    """Holds a receiver's answer until the test opens it; knows when a request is held."""

    opened: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)

    def hold(self) -> None:
        self.arrived.set()
        self.opened.wait(WAIT)

    def then_ok(self, request: BaseHTTPRequestHandler, _number: int) -> None:
        """A receiver's answer: hold every request, then 200."""
        self.hold()
        ok(request)

    def first_then_ok(self, request: BaseHTTPRequestHandler, number: int) -> None:
        """A receiver's answer: hold the first request only, then 200."""
        if number == 1:
            self.hold()
        ok(request)


@contextmanager
def delivering(deliverer: wh.WebhookDeliverer, *gates: Gate) -> Iterator[list[int]]:
    """``deliver_due`` in a thread (its result lands in the list); the gates open at the end."""
    attempted: list[int] = []
    thread = threading.Thread(target=lambda: attempted.append(deliverer.deliver_due()))
    thread.start()
    try:
        yield attempted
    finally:
        for gate in gates:
            gate.opened.set()
        thread.join(WAIT)
        deliverer.stop()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on demand; all are closed (and their gates opened) at the end."""
    started: list[Receiver] = []
    gates: list[Gate] = []

    def start(respond: Callable[[BaseHTTPRequestHandler, int], None] | None = None,
              gate: Gate | None = None) -> Receiver:
        if gate is not None:
            gates.append(gate)
        started.append(Receiver(respond=respond).serve())
        return started[-1]

    yield start
    for gate in gates:
        gate.opened.set()
    for receiver in started:
        receiver.close()


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as job_store:
        yield job_store


def ended_job(store: JobStore, url: str) -> Job:
    """A job that has just FINISHED, with its webhook queued for ``url``."""
    job = store.create_job(webhook_url=url)
    handler = ProgressHandler(store=store, interval=0)
    try:
        assert handler.handle_job_completion(job.id, True, "done")
    finally:
        handler.close()
    assert wh.enqueue(store, "completed", store.require_job(job.id)) == 1
    return job


def row_of(store: JobStore, job: Job) -> wh.WebhookDelivery:
    (row,) = wh.list_deliveries(store, job_id=job.id)
    return row


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def ok(request: BaseHTTPRequestHandler) -> None:
    request.send_response(200)
    request.send_header("content-length", "2")
    request.end_headers()
    request.wfile.write(b"ok")


class TestLargeAnswers:
    def test_a_huge_error_answer_is_read_only_a_few_kb(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        """A 50 MB error page costs neither 50 MB of memory nor the whole download."""
        size, chunk = 50 * 1024 * 1024, b"E" * 65536
        sent: list[int] = []
        hung_up = threading.Event()

        def huge_error(request: BaseHTTPRequestHandler, _number: int) -> None:
            request.send_response(500)
            request.send_header("content-length", str(size))
            request.end_headers()
            written = 0
            try:
                while written < size:
                    request.wfile.write(chunk)
                    written += len(chunk)
            except OSError:
                hung_up.set()
            sent.append(written)

        receiver = receivers(huge_error)
        job = ended_job(store, receiver.url)
        deliverer = wh.WebhookDeliverer(store, secret=SECRET, **FAST)
        tracemalloc.start()
        try:
            assert deliverer.deliver_due() == 1
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            deliverer.stop()

        row = row_of(store, job)
        assert (row.status, row.attempts, row.response_status) == ("pending", 1, 500), row
        assert row.last_error is not None and row.last_error.startswith("HTTP 500: EEEE")
        assert len(row.last_error) <= 1000, f"kept {len(row.last_error)} characters of error"
        assert peak < 4 * 1024 * 1024, f"delivering took a {peak / 2**20:.1f} MB peak"
        wait_for(lambda: bool(sent), "the receiver stopped sending")
        assert hung_up.is_set(), f"the deliverer read the whole answer ({sent[0]:,} bytes)"
        assert sent[0] < size


class TestDeadline:
    def test_an_attempt_ends_at_its_deadline_even_when_the_receiver_trickles(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        """Each byte in time is not enough: the attempt as a whole ends by the deadline."""
        trickling = threading.Event()
        finished = threading.Event()

        def trickle_then_ok(request: BaseHTTPRequestHandler, number: int) -> None:
            if number > 1:
                ok(request)
                return
            trickling.set()
            try:
                for byte in b"HTTP/1.1 200 OK\r\nx-slow: " + b"z" * 200:  # 20 s of answer
                    request.wfile.write(bytes([byte]))
                    request.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                return  # the deliverer hung up, as it should
            finished.set()

        receiver = receivers(trickle_then_ok)
        job = ended_job(store, receiver.url)
        deliverer = wh.WebhookDeliverer(store, secret=SECRET, **{**FAST, "timeout": 1.0})
        try:
            assert deliverer.deliver_due() == 1
            assert trickling.is_set() and not finished.is_set(), (
                "the attempt lasted as long as the receiver kept trickling")
            row = row_of(store, job)
            assert (row.status, row.attempts) == ("pending", 1), row
            assert row.last_error is not None and "1 s deadline passed" in row.last_error, row
            deliver_until(deliverer, settled(store))
        finally:
            deliverer.stop()
        row = row_of(store, job)
        assert (row.status, row.attempts) == ("delivered", 2), "retried after the deadline"
        assert len(receiver.requests) == 2

    def test_a_receiver_silent_past_the_deadline_fails_the_attempt_which_is_retried(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        gate = Gate()
        receiver = receivers(gate.first_then_ok, gate)
        job = ended_job(store, receiver.url)
        deliverer = wh.WebhookDeliverer(store, secret=SECRET, **{**FAST, "timeout": 1.0})
        try:
            assert deliverer.deliver_due() == 1
            assert gate.arrived.is_set() and not gate.opened.is_set()
            row = row_of(store, job)
            assert (row.status, row.attempts) == ("pending", 1), row
            assert row.last_error == "ReadTimeout: the attempt's 1 s deadline passed", row
            deliver_until(deliverer, settled(store))
        finally:
            gate.opened.set()
            deliverer.stop()
        assert (row_of(store, job).status, len(receiver.requests)) == ("delivered", 2)

    def test_a_2xx_whose_body_is_slow_counts_and_is_sent_once(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        """The status line is the answer: a 200 is delivered, however slow the rest is."""
        gate = Gate()

        def ok_then_stall(request: BaseHTTPRequestHandler, _number: int) -> None:
            request.send_response(200)
            request.send_header("content-length", "1000")
            request.end_headers()
            request.wfile.write(b"accepted")
            request.wfile.flush()
            gate.hold()

        receiver = receivers(ok_then_stall, gate)
        job = ended_job(store, receiver.url)
        deliverer = wh.WebhookDeliverer(store, secret=SECRET, max_attempts=3,
                                        **{**FAST, "timeout": 1.0})
        try:
            deliver_until(deliverer, settled(store))
        finally:
            deliverer.stop()
        row = row_of(store, job)
        assert (row.status, row.attempts, row.response_status) == ("delivered", 1, 200), row
        assert len(receiver.requests) == 1, "a delivered message was sent again"


class TestInFlight:
    def test_a_delivery_in_flight_is_not_taken_by_another_deliverer(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        """The claim's lease outlasts the attempt: nobody sends the message twice."""
        gate = Gate()
        receiver = receivers(gate.then_ok, gate)
        job = ended_job(store, receiver.url)
        second = wh.WebhookDeliverer(store, secret=SECRET, **FAST)
        with delivering(wh.WebhookDeliverer(store, secret=SECRET, **FAST), gate) as attempted:
            assert gate.arrived.wait(WAIT), "the first deliverer never posted"
            assert [second.deliver_due() for _ in range(5)] == [0] * 5
        second.stop()
        assert attempted == [1] and row_of(store, job).status == "delivered"
        assert len(receiver.requests) == 1

    def test_a_2xx_after_the_row_was_claimed_again_still_counts(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        """A success is recorded even when the row moved on (another deliverer's claim)."""
        gate = Gate()
        job = ended_job(store, receivers(gate.then_ok, gate).url)
        table = cast(Table, WebhookDeliveryRow.__table__)
        with delivering(wh.WebhookDeliverer(store, secret=SECRET, **FAST), gate):
            assert gate.arrived.wait(WAIT), "the deliverer never posted"
            with store.engine.begin() as connection:  # what a claim after the lease does
                connection.execute(update(table).where(table.c.job_id == job.id)
                                   .values(attempts=2))
        row = row_of(store, job)
        assert (row.status, row.response_status) == ("delivered", 200), row


class TestConcurrency:
    def test_a_slow_endpoint_does_not_hold_up_another_in_the_same_pass(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        gate = Gate()
        slow, fast = receivers(gate.then_ok, gate), receivers()
        slow_job = ended_job(store, slow.url)  # first in line
        fast_job = ended_job(store, fast.url)
        deliverer = wh.WebhookDeliverer(store, secret=SECRET, **{**FAST, "timeout": 30.0})
        with delivering(deliverer, gate) as attempted:
            wait_for(lambda: row_of(store, fast_job).status == "delivered",
                     "the fast endpoint's delivery landed")
            held = row_of(store, slow_job)
            assert (held.status, held.last_error) == ("pending", None), "slow one still in flight"
        assert attempted == [2] and row_of(store, slow_job).status == "delivered"

    def test_the_background_deliverer_serves_others_while_one_endpoint_is_stuck(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        """A backlog for a stuck endpoint fills no batch: the others still go, in order."""
        gate = Gate()
        slow, fast = receivers(gate.first_then_ok, gate), receivers()
        backlog = [ended_job(store, slow.url + f"?n={n}") for n in range(4)]
        fast_jobs = [ended_job(store, fast.url) for _ in range(2)]
        deliverer = wh.WebhookDeliverer(store, secret=SECRET, batch_size=2, poll_interval=0.05,
                                        **{**FAST, "timeout": 30.0})
        deliverer.start()
        try:
            wait_for(lambda: all(row_of(store, job).status == "delivered" for job in fast_jobs),
                     "the fast endpoint's deliveries landed")
            assert len(slow.requests) == 1, "one delivery at a time per endpoint"
            gate.opened.set()
            wait_for(settled(store), "every delivery landed")
        finally:
            gate.opened.set()
            deliverer.stop()
        assert [verified(r)["data"]["id"] for r in slow.requests] == [j.id for j in backlog]

    def test_no_more_endpoints_than_the_concurrency_are_served_at_once(
        self, store: JobStore, receivers: Callable[..., Receiver]
    ) -> None:
        gates = [Gate() for _ in range(3)]
        started = [receivers(gate.then_ok, gate) for gate in gates]
        for receiver in started:
            ended_job(store, receiver.url)
        deliverer = wh.WebhookDeliverer(store, secret=SECRET, concurrency=2, **FAST)
        with delivering(deliverer, *gates) as attempted:
            wait_for(lambda: sum(gate.arrived.is_set() for gate in gates) == 2,
                     "two endpoints were being served")
        assert attempted == [2], "a pass serves at most `concurrency` endpoints"
        assert sorted(len(receiver.requests) for receiver in started) == [0, 1, 1]
