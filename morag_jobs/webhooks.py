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

Delivery is at least once: a receiver that answers 2xx only after the deadline may see
the message again, with the same ``webhook-id``; one whose 2xx status line arrives in
time never does. Only http(s) URLs are accepted, and deliveries go to public addresses
only, unless the operator sets ``MORAG_WEBHOOK_ALLOW_PRIVATE=1``.

The parts live in one module each: :mod:`~morag_jobs.webhook_signing` (secrets and
signatures), :mod:`~morag_jobs.webhook_outbox` (endpoints, the outbox rows, the
listener), :mod:`~morag_jobs.webhook_urls` (which URLs and addresses may be reached),
:mod:`~morag_jobs.webhook_transport` (the HTTP client: deadline and address pinning) and
:mod:`~morag_jobs.webhook_delivery` (the deliverer). Import them from here.
"""

from __future__ import annotations

from morag_jobs.errors import WebhookURLRefused
from morag_jobs.webhook_delivery import WebhookDeliverer
from morag_jobs.webhook_outbox import (
    DELIVERY_STATUSES,
    EVENT_TYPES,
    OutboxListener,
    WebhookDelivery,
    WebhookEndpoint,
    attach_outbox,
    enqueue,
    list_deliveries,
    list_endpoints,
    message_id,
    outbox_listener,
    register_endpoint,
    remove_endpoint,
)
from morag_jobs.webhook_signing import (
    SECRET_PREFIX,
    generate_secret,
    parse_secret,
    sign,
    signature_headers,
)
from morag_jobs.webhook_urls import check_url

__all__ = [
    "DELIVERY_STATUSES",
    "EVENT_TYPES",
    "SECRET_PREFIX",
    "OutboxListener",
    "WebhookDeliverer",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookURLRefused",
    "attach_outbox",
    "check_url",
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
