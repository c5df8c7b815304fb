"""``OutboxStore``: the webhook endpoints and the outbox rows; all the SQL about them.

The webhook modules decide what to send, when and how; this one only reads and writes
``webhook_endpoints`` and ``webhook_deliveries``, through the ``JobStore``'s connections,
so a driver error leaves as ``StoreUnavailable`` as it does from every store call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    Select,
    Table,
    delete,
    insert,
    or_,
    select,
    update,
)

from morag_jobs.events import utc_now
from morag_jobs.store.jobs import JobStore
from morag_jobs.store.models import WebhookDeliveryRow, WebhookEndpointRow
from morag_jobs.store.queries import dialect_insert
from morag_jobs.store.records import Job

__all__ = [
    "DELIVERIES",
    "DELIVERY_STATUSES",
    "ENDPOINTS",
    "DeliveryStatus",
    "OutboxStore",
    "WebhookDelivery",
    "WebhookEndpoint",
]

ENDPOINTS = cast(Table, WebhookEndpointRow.__table__)
DELIVERIES = cast(Table, WebhookDeliveryRow.__table__)

DeliveryStatus = Literal["pending", "delivered", "failed"]
DELIVERY_STATUSES: tuple[str, ...] = ("pending", "delivered", "failed")


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


def _under(endpoint: str) -> ColumnElement[bool]:
    """Rows whose URL belongs to ``endpoint`` (its prefix up to a path, query or fragment)."""
    url = DELIVERIES.c.url
    return or_(url == endpoint,
               *(url.startswith(endpoint + mark, autoescape=True) for mark in "/?#"))


def _insert_once(dialect: str, values: Mapping[str, Any]) -> Insert:
    """INSERT ... ON CONFLICT (message_id) DO NOTHING RETURNING id."""
    statement = dialect_insert(dialect, DELIVERIES, "the webhook outbox needs")
    conflict_free = statement.values(dict(values)).on_conflict_do_nothing(
        index_elements=[DELIVERIES.c.message_id])
    return conflict_free.returning(DELIVERIES.c.id)  # rowcount is not reliable here


def _recipients(connection: Connection, job: Job) -> list[str]:
    """The job's own URL, then its type's endpoints, each once."""
    urls = [job.webhook_url] if job.webhook_url else []
    if job.job_type:
        query = select(ENDPOINTS.c.url).where(ENDPOINTS.c.job_type == job.job_type)
        urls += [url for url in connection.execute(query).scalars() if url not in urls]
    return urls


class OutboxStore:
    """Endpoints per job type and the outbox rows of one ``JobStore``'s database."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"OutboxStore({self.store!r})"

    # -- endpoints per job type -----------------------------------------------------------

    def register_endpoint(self, job_type: str, url: str) -> WebhookEndpoint:
        """The endpoint for (``job_type``, ``url``), added unless it is there already."""
        with self.store._writing() as connection:
            found = connection.execute(
                select(ENDPOINTS).where(ENDPOINTS.c.job_type == job_type, ENDPOINTS.c.url == url)
            ).first()
            if found is None:
                values = {"job_type": job_type, "url": url, "created_at": utc_now()}
                statement = insert(ENDPOINTS).values(values).returning(*ENDPOINTS.c)
                found = connection.execute(statement).one()
        return WebhookEndpoint(**found._mapping)

    def list_endpoints(self, job_type: str | None = None) -> list[WebhookEndpoint]:
        """Registered endpoints, oldest first; only those of ``job_type`` when given."""
        query = select(ENDPOINTS).order_by(ENDPOINTS.c.id)
        if job_type is not None:
            query = query.where(ENDPOINTS.c.job_type == job_type)
        with self.store._reading() as connection:
            return [WebhookEndpoint(**row._mapping) for row in connection.execute(query)]

    def remove_endpoint(self, endpoint_id: int) -> bool:
        """Forget an endpoint; False if there was none."""
        with self.store._writing() as connection:
            result = connection.execute(delete(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id))
        return bool(result.rowcount)

    # -- the outbox -------------------------------------------------------------------------

    def enqueue(self, job: Job, event_type: str, payload: Mapping[str, Any],
                message_id: Callable[[str], str]) -> int:
        """One pending row per recipient of ``job``, in one transaction; the number new.

        ``message_id`` names the message for a URL; a row whose id is queued already is
        left as it is, so the same job end is never queued twice.
        """
        now = utc_now()
        added = 0
        with self.store._writing() as connection:
            for url in _recipients(connection, job):
                values = {
                    "message_id": message_id(url), "job_id": job.id, "event_type": event_type,
                    "url": url, "payload": dict(payload), "status": "pending", "attempts": 0,
                    "next_attempt_at": now, "created_at": now,
                }  # fmt: skip
                statement = _insert_once(connection.dialect.name, values)
                added += len(connection.execute(statement).all())
        return added

    def list_deliveries(
        self,
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
        return self._deliveries(query)

    def due(self, now: datetime, *, excluding: Iterable[str] = (),
            limit: int) -> list[WebhookDelivery]:
        """Pending rows due by ``now``, soonest first, none under the ``excluding`` endpoints."""
        query = (
            select(DELIVERIES)
            .where(DELIVERIES.c.status == "pending", DELIVERIES.c.next_attempt_at <= now,
                   *(~_under(endpoint) for endpoint in excluding))
            .order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id)
            .limit(limit)
        )
        return self._deliveries(query)

    def claim(self, delivery: WebhookDelivery, due_by: datetime, lease_until: datetime) -> bool:
        """Take the row for one attempt if it is as read and due; its lease ends ``lease_until``.

        A conditional UPDATE: still pending, attempts unchanged, due by ``due_by``. It counts
        the attempt and moves ``next_attempt_at`` to the lease's end, so no one else takes it.
        """
        claim = (
            update(DELIVERIES)
            .where(
                DELIVERIES.c.id == delivery.id,
                DELIVERIES.c.status == "pending",
                DELIVERIES.c.attempts == delivery.attempts,
                DELIVERIES.c.next_attempt_at <= due_by,
            )
            .values(attempts=delivery.attempts + 1, next_attempt_at=lease_until)
        )
        with self.store._writing() as connection:
            return connection.execute(claim).rowcount == 1

    # -- outcomes -----------------------------------------------------------------------------

    def record_delivered(self, delivery_id: int, response_status: int | None) -> None:
        """Delivered, whatever became of the row meanwhile (a lease run out, a new claim)."""
        self._settle(delivery_id, None, status="delivered", delivered_at=utc_now(),
                     response_status=response_status, last_error=None)

    def record_failed(self, delivery_id: int, attempts: int, response_status: int | None,
                      error: str | None) -> None:
        """Given up, if attempt ``attempts`` is still the row's last and it is pending."""
        self._settle(delivery_id, attempts, status="failed",
                     response_status=response_status, last_error=error)

    def record_retry(self, delivery_id: int, attempts: int, response_status: int | None,
                     error: str | None, next_attempt_at: datetime) -> None:
        """Due again at ``next_attempt_at``, if attempt ``attempts`` is still the row's last."""
        self._settle(delivery_id, attempts, next_attempt_at=next_attempt_at,
                     response_status=response_status, last_error=error)

    def _settle(self, delivery_id: int, attempts: int | None, **values: Any) -> None:
        """Write an attempt's outcome unless the row is delivered; a failure (``attempts``
        given) only onto the pending attempt it belongs to."""
        mine = [DELIVERIES.c.id == delivery_id, DELIVERIES.c.status != "delivered"]
        if attempts is not None:
            mine += [DELIVERIES.c.attempts == attempts, DELIVERIES.c.status == "pending"]
        with self.store._writing() as connection:
            connection.execute(update(DELIVERIES).where(*mine).values(values))

    def _deliveries(self, query: Select[Any]) -> list[WebhookDelivery]:
        with self.store._reading() as connection:
            return [WebhookDelivery.from_row(row._mapping) for row in connection.execute(query)]
