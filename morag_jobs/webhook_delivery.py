"""The webhook deliverer: POSTs due outbox rows, several endpoints at once, each attempt bounded.

Three rules keep one bad receiver from hurting the rest. Endpoints (a URL's scheme and
host:port as written) are served in parallel by a bounded pool of workers, one delivery
in flight per endpoint, so each endpoint gets its messages oldest first, one at a time,
and a slow one holds only its own worker. Every attempt ends by a total deadline
(connect, send, answer; see :mod:`morag_jobs.webhook_transport`), and only the first few
KB of an answer are read. And a 2xx counts as soon as its status line arrives: the row
is recorded ``delivered`` even if it was claimed again meanwhile, and never sent again.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from morag_jobs import settings
from morag_jobs.errors import WebhookURLRefused
from morag_jobs.events import utc_now
from morag_jobs.logs import get_logger
from morag_jobs.store import JobStore
from morag_jobs.store.outbox import OutboxStore, WebhookDelivery
from morag_jobs.webhook_signing import parse_secret, signature_headers
from morag_jobs.webhook_transport import deadline, guarded_client
from morag_jobs.webhook_urls import check_url

__all__ = ["WebhookDeliverer"]

log = get_logger(__name__)

_ERROR_CHARS = 1000
"""The most of an error kept on the row: the start of an error page says what went wrong."""
_BODY_BYTES = 4096
"""The most of a response body read: ``_ERROR_CHARS`` of any UTF-8, never a 100 MB page."""
_LEASE_MARGIN = 30.0
"""Seconds a claim outlives the attempt's deadline: time to record the outcome, clock skew."""
_PERMANENT = (httpx.InvalidURL, httpx.UnsupportedProtocol)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What one POST came to: ``ok``, else the reason (``permanent`` means no retry)."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False


def endpoint_of(url: str) -> str:
    """The scheme and authority of ``url`` as written: deliveries to it go one at a time."""
    start = url.find("://") + 3 if "://" in url else 0
    ends = [index for index in (url.find(mark, start) for mark in "/?#") if index >= 0]
    return url[: min(ends, default=len(url))]


def _error_text(response: httpx.Response) -> str:
    """``HTTP 500: <the start of the body>``, reading at most ``_BODY_BYTES`` however long it is."""
    head = bytearray()
    try:
        for chunk in response.iter_raw(_BODY_BYTES):
            head += chunk
            if len(head) >= _BODY_BYTES:
                break
    except httpx.HTTPError:  # a body cut short or too slow: what came is reason enough
        pass
    text = head[:_BODY_BYTES].decode(response.encoding or "utf-8", errors="replace").strip()
    return (f"HTTP {response.status_code}" + (f": {text}" if text else ""))[:_ERROR_CHARS]


class WebhookDeliverer:
    """POSTs due outbox rows; safe to run in several processes at once.

    A row is claimed just before its POST by a conditional UPDATE (still pending, attempts
    unchanged, due) that moves ``next_attempt_at`` past the attempt's deadline as a lease:
    no other pass takes it while the POST is in flight, and a deliverer that dies leaves
    it to another after the lease. After ``max_attempts`` the row is ``failed`` with the
    last error. The defaults come from the environment (:mod:`morag_jobs.settings`):
    ``secret`` from ``MORAG_WEBHOOK_SECRET``, ``timeout`` (seconds per attempt, in all)
    from ``MORAG_WEBHOOK_TIMEOUT``, ``concurrency`` (endpoints served at once) from
    ``MORAG_WEBHOOK_CONCURRENCY``, and ``allow_private`` (deliver to loopback and private
    addresses) from ``MORAG_WEBHOOK_ALLOW_PRIVATE``.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        secret: str | bytes | None = None,
        max_attempts: int = 8,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float | None = None,
        concurrency: int | None = None,
        allow_private: bool | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 50,
    ) -> None:
        secret = secret if secret is not None else settings.webhook_secret()
        if secret is None:
            raise ValueError(
                "no webhook secret: pass secret= or set MORAG_WEBHOOK_SECRET "
                "(make one with `morag-jobs webhooks secret`)"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        self.store = store
        self._outbox = OutboxStore(store)
        self._key = parse_secret(secret)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = settings.webhook_timeout() if timeout is None else timeout
        self.concurrency = settings.webhook_concurrency() if concurrency is None else concurrency
        if not self.timeout > 0 or self.concurrency < 1:
            raise ValueError(f"timeout must be above 0 and concurrency at least 1, not "
                             f"{self.timeout} and {self.concurrency}")
        self.allow_private = (settings.webhook_allow_private() if allow_private is None
                              else allow_private)
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # endpoints with a delivery in flight
        self._running: set[Future[int]] = set()
        self._workers: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_due(self, now: datetime | None = None) -> int:
        """Attempt what is due, endpoints in parallel, and wait; the number of attempts made.

        Endpoints the background thread is already sending to are left to it, so each
        endpoint still has one delivery in flight at a time.
        """
        if self._thread is None:
            self._stopping.clear()  # a direct call is not stopped by an earlier stop()
        started = self._dispatch(now)
        futures.wait(started)
        return sum(future.result() for future in started if not future.cancelled())

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubling from ``base_delay``, half jittered."""
        delay = min(self.max_delay, self.base_delay * 2 ** (attempts - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def start(self) -> None:
        """Deliver in a background thread, every ``poll_interval`` s and when a worker frees."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="morag-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and the workers (after their current attempt) and close the client."""
        self._stopping.set()
        self._wake.set()
        limit = timeout if timeout is not None else self.timeout + 5
        if self._thread is not None:
            self._thread.join(limit)
            self._thread = None
        with self._lock:
            workers, client, running = self._workers, self._client, list(self._running)
            self._workers = self._client = None
        if workers is not None:
            workers.shutdown(wait=False, cancel_futures=True)
            futures.wait(running, limit)
        if client is not None:
            client.close()

    def __enter__(self) -> WebhookDeliverer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self._dispatch(None)
            except Exception as error:  # the database may be away; try again next poll
                log.warning("webhook delivery pass failed", error=str(error))
            self._wake.wait(self.poll_interval)

    def _open(self) -> tuple[ThreadPoolExecutor, httpx.Client]:
        with self._lock:
            if self._workers is None or self._client is None:  # first use, or after stop()
                self._workers = ThreadPoolExecutor(self.concurrency, "morag-webhook")
                self._client = guarded_client(allow_private=self.allow_private,
                                              timeout=self.timeout)
            return self._workers, self._client

    def _dispatch(self, now: datetime | None) -> list[Future[int]]:
        """Hand each due endpoint not already in flight to a free worker; don't wait."""
        workers, client = self._open()
        with self._lock:
            busy = set(self._busy)
        if len(busy) >= self.concurrency:
            return []
        due = self._outbox.due(now or utc_now(), limit=self.batch_size,
                               excluding=busy)  # their turn comes when they free
        queues: dict[str, list[WebhookDelivery]] = {}
        for delivery in due:
            queues.setdefault(endpoint_of(delivery.url), []).append(delivery)
        started: list[tuple[str, Future[int]]] = []
        with self._lock:
            if self._workers is not workers:  # stop() came in between: submit nothing
                return []
            for endpoint, queue in queues.items():
                if endpoint in self._busy or len(self._busy) >= self.concurrency:
                    continue
                self._busy.add(endpoint)
                future = workers.submit(self._deliver_queue, client, queue, now)
                self._running.add(future)
                started.append((endpoint, future))
        for endpoint, future in started:  # outside the lock: a done future calls back at once
            future.add_done_callback(lambda done, e=endpoint: self._finished(e, done))
        return [future for _, future in started]

    def _finished(self, endpoint: str, future: Future[int]) -> None:
        with self._lock:
            self._busy.discard(endpoint)
            self._running.discard(future)
        self._wake.set()  # the endpoint is free, and a worker too: look for more
        error = None if future.cancelled() else future.exception()
        if error is not None:
            log.warning("webhook deliveries to an endpoint stopped", endpoint=endpoint,
                        error=str(error))

    def _deliver_queue(self, client: httpx.Client, queue: Iterable[WebhookDelivery],
                       now: datetime | None) -> int:
        """One endpoint's due rows, in order; the number attempted."""
        attempted = 0
        for delivery in queue:
            if self._stopping.is_set():
                break
            if self._claim(delivery, now):
                attempt = self._post(client, delivery)
                self._record(delivery, attempt, delivery.attempts + 1, now or utc_now())
                attempted += 1
        return attempted

    def _claim(self, delivery: WebhookDelivery, now: datetime | None) -> bool:
        clock = utc_now()
        lease = max(now or clock, clock) + timedelta(seconds=self.timeout + _LEASE_MARGIN)
        return self._outbox.claim(delivery, now or clock, lease)

    def _post(self, client: httpx.Client, delivery: WebhookDelivery) -> _Attempt:
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
        headers = {
            "content-type": "application/json",
            "user-agent": "morag-jobs-webhooks",
            "accept-encoding": "identity",  # an error page is read raw, never inflated
            **signature_headers(self._key, delivery.message_id, body),
        }
        try:
            check_url(delivery.url)  # a job's own URL was never checked at submit time
            with deadline(self.timeout), client.stream(
                "POST", delivery.url, content=body.encode(), headers=headers
            ) as response:
                if response.is_success:  # the status line is the answer: the body is not read
                    return _Attempt(True, response.status_code)
                return _Attempt(False, response.status_code, _error_text(response))
        except WebhookURLRefused as error:
            return _Attempt(False, error=f"refused: {error.reason}", permanent=True)
        except _PERMANENT as error:
            return _Attempt(False, error=f"{type(error).__name__}: {error}", permanent=True)
        except httpx.HTTPError as error:
            return _Attempt(False, error=f"{type(error).__name__}: {error}"[:_ERROR_CHARS])

    def _record(self, delivery: WebhookDelivery, attempt: _Attempt, attempts: int,
                now: datetime) -> None:
        # A 2xx lands whatever became of the row meanwhile (its lease ran out, another
        # deliverer claimed it): the receiver has the message. A failure lands only on
        # the attempt it belongs to.
        outbox, status = self._outbox, attempt.status_code
        outcome = "delivered" if attempt.ok else "failed"
        if attempt.ok:
            outbox.record_delivered(delivery.id, status)
        elif attempt.permanent:
            outbox.record_failed(delivery.id, attempts, status, attempt.error)
        elif attempts >= self.max_attempts:
            gave_up = f"gave up after {attempts} attempts: {attempt.error}"
            outbox.record_failed(delivery.id, attempts, status, gave_up)
        else:
            outcome = "retry"
            retry_at = now + timedelta(seconds=self.backoff(attempts))
            outbox.record_retry(delivery.id, attempts, status, attempt.error, retry_at)
        log.info("webhook attempt", message_id=delivery.message_id, url=delivery.url,
                 attempt=attempts, outcome=outcome, error=attempt.error)
