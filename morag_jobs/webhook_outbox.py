"""The webhook outbox: endpoints per job type, one row per message, and the delivery log.

When a job ends (FINISHED, FAILED, CANCELLED) the :class:`OutboxListener` attached to a
``ProgressHandler`` inserts one ``webhook_deliveries`` row per URL: the job's own
``webhook_url`` and every endpoint registered for its ``job_type``. It only inserts rows,
so a receiver that is down never slows progress handling; the
:class:`~morag_jobs.webhook_delivery.WebhookDeliverer` sends them. The rows themselves
are read and written by :class:`~morag_jobs.store.outbox.OutboxStore`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from morag_jobs.errors import StoreUnavailable
from morag_jobs.events import utc_now
from morag_jobs.logs import get_logger
from morag_jobs.store import Job, JobStore
from morag_jobs.store.outbox import (
    DELIVERY_STATUSES,
    DeliveryStatus,
    OutboxStore,
    WebhookDelivery,
    WebhookEndpoint,
)
from morag_jobs.webhook_urls import check_url

if TYPE_CHECKING:
    from morag_jobs.handler import ProgressHandler

__all__ = [
    "DELIVERY_STATUSES",
    "EVENT_TYPES",
    "DeliveryStatus",
    "OutboxListener",
    "WebhookDelivery",
    "WebhookEndpoint",
    "attach_outbox",
    "enqueue",
    "list_deliveries",
    "list_endpoints",
    "message_id",
    "outbox_listener",
    "register_endpoint",
    "remove_endpoint",
]

log = get_logger(__name__)

EVENT_TYPES = {"completed": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}
"""Handler listener event types that end a job, and the webhook ``type`` each becomes."""
_BACKLOG = 10_000


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
    return OutboxStore(store).register_endpoint(job_type, url)


def list_endpoints(store: JobStore, job_type: str | None = None) -> list[WebhookEndpoint]:
    """Registered endpoints, oldest first; only those of ``job_type`` when given."""
    return OutboxStore(store).list_endpoints(job_type)


def remove_endpoint(store: JobStore, endpoint_id: int) -> bool:
    """Stop sending to an endpoint; deliveries already queued still go out. False if unknown."""
    return OutboxStore(store).remove_endpoint(endpoint_id)


# -- the outbox -------------------------------------------------------------------------


def message_id(job_id: str, event_type: str, url: str) -> str:
    """The ``webhook-id``: one per (job, event, URL), so the same job end is queued once."""
    digest = hashlib.sha256(f"{job_id}\0{event_type}\0{url}".encode()).hexdigest()
    return f"msg_{digest[:40]}"


def _payload(event_type: str, job: Job) -> dict[str, Any]:
    when = job.finished_at or job.updated_at or utc_now()
    return {"type": EVENT_TYPES[event_type], "timestamp": when.isoformat(), "data": job.to_dict()}


def enqueue(store: JobStore, event_type: str, job: Job) -> int:
    """Queue the end of ``job`` for each of its URLs; the number of rows new this time."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event type {event_type!r} is not one of {', '.join(EVENT_TYPES)}")
    added = OutboxStore(store).enqueue(job, event_type, _payload(event_type, job),
                                       lambda url: message_id(job.id, event_type, url))
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
                except StoreUnavailable as error:
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


def attach_outbox(handler: ProgressHandler) -> ProgressHandler:
    """Queue the completion webhooks of every job ``handler`` ends; returns ``handler``.

    Called where a handler is assembled (``install()``, ``create_app()``, the CLI), so
    every process that ends jobs fills the durable outbox and whichever process runs a
    ``WebhookDeliverer`` sends them. Attaching twice attaches once.
    """
    if not any(isinstance(listener, OutboxListener) for listener in handler.listeners):
        handler.add_listener(OutboxListener(handler.store))
    return handler


def list_deliveries(
    store: JobStore,
    job_id: str | None = None,
    status: str | None = None,
    *,
    limit: int | None = 100,
    offset: int = 0,
) -> list[WebhookDelivery]:
    """The delivery log, newest first, optionally of one job and/or one status."""
    return OutboxStore(store).list_deliveries(job_id, status, limit=limit, offset=offset)
