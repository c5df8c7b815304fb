"""The webhook outbox: endpoints per job type, one row per message, and the delivery log.

When a job ends (FINISHED, FAILED, CANCELLED) the :class:`OutboxListener` attached to a
``ProgressHandler`` inserts one ``webhook_deliveries`` row per URL: the job's own
``webhook_url`` and every endpoint registered for its ``job_type``. It only inserts rows,
so a receiver that is down never slows progress handling; the
:class:`~morag_jobs.webhook_delivery.WebhookDeliverer` sends them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, cast

import structlog
from sqlalchemy import Connection, Insert, Table, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from morag_jobs.errors import StoreUnavailable
from morag_jobs.events import utc_now
from morag_jobs.store import Job, JobStore
from morag_jobs.store.models import WebhookDeliveryRow, WebhookEndpointRow
from morag_jobs.webhook_urls import check_url

__all__ = [
    "DELIVERIES",
    "DELIVERY_STATUSES",
    "EVENT_TYPES",
    "OutboxListener",
    "WebhookDelivery",
    "WebhookEndpoint",
    "enqueue",
    "list_deliveries",
    "list_endpoints",
    "message_id",
    "outbox_listener",
    "register_endpoint",
    "remove_endpoint",
]

log = structlog.get_logger(__name__)

ENDPOINTS = cast(Table, WebhookEndpointRow.__table__)
DELIVERIES = cast(Table, WebhookDeliveryRow.__table__)

EVENT_TYPES = {"completed": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}
"""Handler listener event types that end a job, and the webhook ``type`` each becomes."""
DeliveryStatus = Literal["pending", "delivered", "failed"]
DELIVERY_STATUSES: tuple[str, ...] = ("pending", "delivered", "failed")
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_BACKLOG = 10_000


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
def connect(store: JobStore, *, write: bool) -> Iterator[Connection]:
    """A connection to the outbox tables (a transaction when ``write``)."""
    store._ensure_ready()  # a new SQLite file is migrated first, as in every JobStore call
    with store.engine.begin() if write else store.engine.connect() as connection:
        yield connection


# -- endpoints per job type ---------------------------------------------------------------


def register_endpoint(store: JobStore, job_type: str, url: str) -> WebhookEndpoint:
    """Send the end of every ``job_type`` job to ``url``; registering twice is a no-op.

    A URL that is not absolute http(s) raises :class:`~morag_jobs.errors.WebhookURLRefused`
    (a ``ValueError``); whether its host is public is checked at each delivery, when the
    name is resolved, since the answer can change after registration.
    """
    if not job_type:
        raise ValueError("a webhook endpoint needs a job type")
    check_url(url)
    with connect(store, write=True) as connection:
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
    with connect(store, write=False) as connection:
        return [WebhookEndpoint(**row._mapping) for row in connection.execute(query)]


def remove_endpoint(store: JobStore, endpoint_id: int) -> bool:
    """Stop sending to an endpoint; deliveries already queued still go out. False if unknown."""
    with connect(store, write=True) as connection:
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
    with connect(store, write=True) as connection:
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
    with connect(store, write=False) as connection:
        return [WebhookDelivery.from_row(row._mapping) for row in connection.execute(query)]

