"""Completion webhooks: a durable outbox, signed per the Standard Webhooks spec.

When a job ends (FINISHED, FAILED, CANCELLED) the :func:`outbox_listener` attached to a
``ProgressHandler`` inserts one ``webhook_deliveries`` row per URL: the job's own
``webhook_url`` (set at submit time) and every endpoint registered for its
``job_type``. It only inserts rows, so a receiver that is down never slows progress
handling. A :class:`WebhookDeliverer` (a thread in the API server, or
``morag-jobs webhooks deliver``) POSTs the due rows, retries failures with exponential
backoff and jitter, and gives up after ``max_attempts``, recording why. The rows live in
the database, so deliveries survive a restart; every attempt is visible through
:func:`list_deliveries` (``morag-jobs webhooks deliveries``).

Each POST carries the JSON body ``{"type": "job.completed" | "job.failed" |
"job.cancelled", "timestamp": ISO 8601, "data": <the job>}`` and three headers::

    webhook-id:        msg_...     the delivery's id: the same on every retry (dedupe on it)
    webhook-timestamp: 1763812800  unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>

The secret is ``whsec_<base64>`` (``MORAG_WEBHOOK_SECRET``; make one with
``morag-jobs webhooks secret``); the HMAC key is the base64-decoded part after
``whsec_``. A receiver verifies with any Standard Webhooks library, e.g. in Python::

    from standardwebhooks import Webhook          # pip install standardwebhooks
    event = Webhook(secret).verify(raw_body, request_headers)   # raises if forged or stale

Delivery is at least once: a receiver that answers 2xx after a timeout may see the
message again, with the same ``webhook-id``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import httpx
import structlog
from sqlalchemy import Connection, Insert, Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from morag_jobs import settings
from morag_jobs.errors import StoreUnavailable
from morag_jobs.events import utc_now
from morag_jobs.store import Job, JobStore
from morag_jobs.store.models import WebhookDeliveryRow, WebhookEndpointRow

__all__ = [
    "DELIVERY_STATUSES",
    "EVENT_TYPES",
    "OutboxListener",
    "WebhookDeliverer",
    "WebhookDelivery",
    "WebhookEndpoint",
    "enqueue",
    "generate_secret",
    "list_deliveries",
    "list_endpoints",
    "message_id",
    "outbox_listener",
    "parse_secret",
    "register_endpoint",
    "remove_endpoint",
    "sign",
    "signature_headers",
]

log = structlog.get_logger(__name__)

ENDPOINTS = cast(Table, WebhookEndpointRow.__table__)
DELIVERIES = cast(Table, WebhookDeliveryRow.__table__)

EVENT_TYPES = {"completed": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}
"""Handler listener event types that end a job, and the webhook ``type`` each becomes."""
DeliveryStatus = Literal["pending", "delivered", "failed"]
DELIVERY_STATUSES: tuple[str, ...] = ("pending", "delivered", "failed")
SECRET_PREFIX = "whsec_"
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_PERMANENT = (httpx.InvalidURL, httpx.UnsupportedProtocol)
_ERROR_CHARS = 500
_BACKLOG = 10_000


# -- signing ----------------------------------------------------------------------------


def parse_secret(secret: str | bytes) -> bytes:
    """The HMAC key: bytes as given, or the base64 after ``whsec_`` (the prefix is optional)."""
    if isinstance(secret, bytes):
        key = secret
    else:
        try:
            key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except ValueError:
            raise ValueError(
                "a webhook secret is 'whsec_' followed by base64; "
                "make one with `morag-jobs webhooks secret`"
            ) from None
    if len(key) < 16:
        raise ValueError(f"a webhook secret needs at least 16 bytes of key, not {len(key)}")
    return key


def generate_secret() -> str:
    """A new random secret in the ``whsec_<base64>`` form (32 bytes of key)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(key: bytes, message_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 of HMAC-SHA256(key, f"{message_id}.{timestamp}.{body}")>``."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    key: bytes, message_id: str, body: str, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (``timestamp`` defaults to now)."""
    when = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(when),
        "webhook-signature": sign(key, message_id, when, body),
    }


# -- records ----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A URL that receives the end of every job of ``job_type``."""

    id: int
    job_type: str
    url: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One outbox row: a message for one URL and its delivery so far."""

    id: int
    message_id: str
    job_id: str
    event_type: str
    url: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    response_status: int | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WebhookDelivery:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@contextmanager
def _connect(store: JobStore, *, write: bool) -> Iterator[Connection]:
    store._ensure_ready()  # a new SQLite file is migrated first, as in every JobStore call
    with store.engine.begin() if write else store.engine.connect() as connection:
        yield connection


# -- endpoints per job type ---------------------------------------------------------------


def _checked_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise ValueError(f"webhook URL {url!r} is not a URL: {error}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"webhook URL {url!r} must be absolute http:// or https://")
    return url


def register_endpoint(store: JobStore, job_type: str, url: str) -> WebhookEndpoint:
    """Send the end of every ``job_type`` job to ``url``; registering twice is a no-op."""
    if not job_type:
        raise ValueError("a webhook endpoint needs a job type")
    _checked_url(url)
    with _connect(store, write=True) as connection:
        found = connection.execute(
            select(ENDPOINTS).where(ENDPOINTS.c.job_type == job_type, ENDPOINTS.c.url == url)
        ).first()
        if found is None:
            values = {"job_type": job_type, "url": url, "created_at": utc_now()}
            statement = insert(ENDPOINTS).values(values).returning(*ENDPOINTS.c)
            found = connection.execute(statement).one()
    return WebhookEndpoint(**found._mapping)


def list_endpoints(store: JobStore, job_type: str | None = None) -> list[WebhookEndpoint]:
    """Registered endpoints, oldest first; only those of ``job_type`` when given."""
    query = select(ENDPOINTS).order_by(ENDPOINTS.c.id)
    if job_type is not None:
        query = query.where(ENDPOINTS.c.job_type == job_type)
    with _connect(store, write=False) as connection:
        return [WebhookEndpoint(**row._mapping) for row in connection.execute(query)]


def remove_endpoint(store: JobStore, endpoint_id: int) -> bool:
    """Stop sending to an endpoint; deliveries already queued still go out. False if unknown."""
    with _connect(store, write=True) as connection:
        result = connection.execute(delete(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id))
    return bool(result.rowcount)


# -- the outbox -------------------------------------------------------------------------


def message_id(job_id: str, event_type: str, url: str) -> str:
    """The ``webhook-id``: one per (job, event, URL), so the same job end is queued once."""
    digest = hashlib.sha256(f"{job_id}\0{event_type}\0{url}".encode()).hexdigest()
    return f"msg_{digest[:40]}"


def _payload(event_type: str, job: Job) -> dict[str, Any]:
    when = job.finished_at or job.updated_at or utc_now()
    return {"type": EVENT_TYPES[event_type], "timestamp": when.isoformat(), "data": job.to_dict()}


def _urls(connection: Connection, job: Job) -> list[str]:
    urls = [job.webhook_url] if job.webhook_url else []
    if job.job_type:
        query = select(ENDPOINTS.c.url).where(ENDPOINTS.c.job_type == job.job_type)
        urls += [url for url in connection.execute(query).scalars() if url not in urls]
    return urls


def _insert_once(dialect: str, values: Mapping[str, Any]) -> Insert:
    """INSERT ... ON CONFLICT (message_id) DO NOTHING RETURNING id."""
    dialect_insert = _INSERTS.get(dialect)
    if dialect_insert is None:
        raise NotImplementedError(f"the webhook outbox needs PostgreSQL or SQLite, not {dialect}")
    statement = dialect_insert(DELIVERIES).values(dict(values))
    conflict_free = statement.on_conflict_do_nothing(index_elements=[DELIVERIES.c.message_id])
    return conflict_free.returning(DELIVERIES.c.id)  # rowcount is not reliable here


def enqueue(store: JobStore, event_type: str, job: Job) -> int:
    """Queue the end of ``job`` for each of its URLs; the number of rows new this time."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event type {event_type!r} is not one of {', '.join(EVENT_TYPES)}")
    now = utc_now()
    payload = _payload(event_type, job)
    added = 0
    with _connect(store, write=True) as connection:
        for url in _urls(connection, job):
            values = {
                "message_id": message_id(job.id, event_type, url), "job_id": job.id,
                "event_type": event_type, "url": url, "payload": payload, "status": "pending",
                "attempts": 0, "next_attempt_at": now, "created_at": now,
            }  # fmt: skip
            added += len(connection.execute(_insert_once(connection.dialect.name, values)).all())
    if added:
        log.info("webhooks queued", job_id=job.id, event_type=event_type, count=added)
    return added


class OutboxListener:
    """A ``ProgressHandler`` listener that queues webhooks when a job ends; it never raises.

    A row it cannot insert (database down) is kept in memory and tried again on the next
    call; ``backlog`` says how many wait.
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._backlog: deque[tuple[str, Job]] = deque(maxlen=_BACKLOG)
        self._lock = threading.Lock()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def __call__(self, event_type: str, job: Job) -> None:
        if event_type not in EVENT_TYPES:
            return
        with self._lock:
            self._backlog.append((event_type, job))
            while self._backlog:
                pending_type, pending_job = self._backlog[0]
                try:
                    enqueue(self.store, pending_type, pending_job)
                except (DBAPIError, StoreUnavailable) as error:
                    log.error("could not queue webhooks; will retry on the next job end",
                              job_id=pending_job.id, event_type=pending_type,
                              error=str(error), backlog=len(self._backlog))
                    return
                except Exception:  # the handler must go on whatever the outbox does
                    log.exception("could not queue webhooks; dropped",
                                  job_id=pending_job.id, event_type=pending_type)
                self._backlog.popleft()

    def __repr__(self) -> str:
        return f"OutboxListener({self.store!r})"


def outbox_listener(store: JobStore) -> OutboxListener:
    """The listener to attach: ``handler.add_listener(outbox_listener(handler.store))``."""
    return OutboxListener(store)


def list_deliveries(
    store: JobStore,
    job_id: str | None = None,
    status: str | None = None,
    *,
    limit: int | None = 100,
    offset: int = 0,
) -> list[WebhookDelivery]:
    """The delivery log, newest first, optionally of one job and/or one status."""
    query = select(DELIVERIES).order_by(DELIVERIES.c.id.desc()).offset(offset).limit(limit)
    if job_id is not None:
        query = query.where(DELIVERIES.c.job_id == job_id)
    if status is not None:
        if status not in DELIVERY_STATUSES:
            allowed = ", ".join(DELIVERY_STATUSES)
            raise ValueError(f"delivery status {status!r} is not one of {allowed}")
        query = query.where(DELIVERIES.c.status == status)
    with _connect(store, write=False) as connection:
        return [WebhookDelivery.from_row(row._mapping) for row in connection.execute(query)]


# -- delivery ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What one POST came to: ``ok``, else the reason (``permanent`` means no retry)."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False


class WebhookDeliverer:
    """POSTs due outbox rows; safe to run in several processes at once.

    A row is claimed by a conditional UPDATE (still pending, attempts unchanged, due),
    which moves ``next_attempt_at`` past the request's timeout as a lease: a deliverer
    that dies mid-request leaves the row to be retried by another one after the lease.
    After ``max_attempts`` the row is ``failed`` with the last error. ``secret`` defaults
    to ``MORAG_WEBHOOK_SECRET``.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        secret: str | bytes | None = None,
        max_attempts: int = 8,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
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
        self._key = parse_secret(secret)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_due(self, now: datetime | None = None) -> int:
        """Attempt up to ``batch_size`` due deliveries now; the number attempted."""
        fixed = now
        now = now or utc_now()
        query = (
            select(DELIVERIES)
            .where(DELIVERIES.c.status == "pending", DELIVERIES.c.next_attempt_at <= now)
            .order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id)
            .limit(self.batch_size)
        )
        with _connect(self.store, write=False) as connection:
            due = [WebhookDelivery.from_row(row._mapping) for row in connection.execute(query)]
        attempted = 0
        for delivery in due:
            if self._stopping.is_set() and self._thread is not None:
                break
            if self._claim(delivery, now):
                attempt = self._post(delivery)
                self._record(delivery, attempt, delivery.attempts + 1, fixed or utc_now())
                attempted += 1
        return attempted

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubling from ``base_delay``, half jittered."""
        delay = min(self.max_delay, self.base_delay * 2 ** (attempts - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def start(self) -> None:
        """Deliver in a background thread, polling every ``poll_interval`` seconds."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._owns_client and self._client.is_closed:  # started again after stop()
            self._client = httpx.Client(timeout=self.timeout)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="morag-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread (after its current request) and close the client we made."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.timeout + 5)
            self._thread = None
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> WebhookDeliverer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                while self.deliver_due() >= self.batch_size and not self._stopping.is_set():
                    pass
            except Exception as error:  # the database may be away; try again next poll
                log.warning("webhook delivery pass failed", error=str(error))
            self._stopping.wait(self.poll_interval)

    def _claim(self, delivery: WebhookDelivery, now: datetime) -> bool:
        lease = now + timedelta(seconds=self.timeout + 30)
        claim = (
            update(DELIVERIES)
            .where(
                DELIVERIES.c.id == delivery.id,
                DELIVERIES.c.status == "pending",
                DELIVERIES.c.attempts == delivery.attempts,
                DELIVERIES.c.next_attempt_at <= now,
            )
            .values(attempts=delivery.attempts + 1, next_attempt_at=lease)
        )
        with _connect(self.store, write=True) as connection:
            return connection.execute(claim).rowcount == 1

    def _post(self, delivery: WebhookDelivery) -> _Attempt:
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
        headers = {
            "content-type": "application/json",
            "user-agent": "morag-jobs-webhooks",
            **signature_headers(self._key, delivery.message_id, body),
        }
        try:
            response = self._client.post(
                delivery.url, content=body.encode(), headers=headers, timeout=self.timeout
            )
        except _PERMANENT as error:
            return _Attempt(False, error=f"{type(error).__name__}: {error}", permanent=True)
        except httpx.HTTPError as error:
            return _Attempt(False, error=f"{type(error).__name__}: {error}"[:_ERROR_CHARS])
        if response.is_success:
            return _Attempt(True, response.status_code)
        text = response.text.strip()
        reason = f"HTTP {response.status_code}" + (f": {text}" if text else "")
        return _Attempt(False, response.status_code, reason[:_ERROR_CHARS])

    def _record(self, delivery: WebhookDelivery, attempt: _Attempt, attempts: int,
                now: datetime) -> None:
        values: dict[str, Any] = {"response_status": attempt.status_code,
                                  "last_error": attempt.error}
        if attempt.ok:
            values.update(status="delivered", delivered_at=utc_now())
        elif attempt.permanent or attempts >= self.max_attempts:
            values.update(status="failed",
                          last_error=f"gave up after {attempts} attempts: {attempt.error}")
        else:
            values["next_attempt_at"] = now + timedelta(seconds=self.backoff(attempts))
        record = update(DELIVERIES).where(
            DELIVERIES.c.id == delivery.id, DELIVERIES.c.attempts == attempts,
            DELIVERIES.c.status == "pending",
        ).values(values)
        with _connect(self.store, write=True) as connection:
            connection.execute(record)
        log.info("webhook attempt", message_id=delivery.message_id, url=delivery.url,
                 attempt=attempts, outcome=values.get("status", "retry"),
                 error=attempt.error)
