"""``GET /metrics`` (Prometheus) and ``GET /healthz``, and the middleware that times updates.

Each app has its own ``CollectorRegistry``, so several apps in one process (tests) never
share counters. Metrics:

- ``morag_jobs_updates_total{source, outcome, result}``: every progress event by where
  it came from and what became of it: the handler's outcomes (``queued``, ``applied``,
  ``stale``, ``stage_behind``, ``terminal``, ``rejected``, ``no_job``) and the API's own
  refusals and no-ops for ``source="remote"`` (``invalid``, ``too_large``,
  ``not_found``, ``forbidden``, ``conflict``, ``duplicate``); ``result`` sums them up
  as ``pending``, ``applied``, ``ignored`` or ``rejected``.
- ``morag_jobs_update_request_seconds{route}``: latency of the remote-worker routes.
- ``morag_jobs_jobs{status}``: jobs per status, counted at scrape time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from morag_jobs.api.auth import bearer_token
from morag_jobs.api.schemas import ErrorBody, Health
from morag_jobs.errors import StoreUnavailable
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStore

__all__ = ["ApiMetrics", "UpdateTimer", "router"]

RESULTS = {
    "queued": "pending",
    "applied": "applied",
    "stale": "ignored",
    "stage_behind": "ignored",
    "terminal": "ignored",
    "duplicate": "ignored",
    "conflict": "ignored",
}
"""Outcome to result; every other outcome (invalid, not_found, forbidden ...) is rejected."""
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REMOTE_PREFIX = "/api/v1/remote-jobs/"


class ApiMetrics:
    """The app's registry: handler statistics, the API's own counts, latency, jobs by status."""

    def __init__(self, handler: ProgressHandler, store: JobStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.api_outcomes: Counter[str] = Counter()
        self.latency = Histogram(
            "morag_jobs_update_request_seconds",
            "Time to answer a remote worker's progress or completion request.",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.registry.register(_UpdatesCollector(handler, self.api_outcomes))
        self.registry.register(_JobsCollector(store))

    def count_update(self, outcome: str) -> None:
        """A remote progress report the API answered itself (refused, or a no-op)."""
        self.api_outcomes[outcome] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _UpdatesCollector(Collector):
    def __init__(self, handler: ProgressHandler, api_outcomes: Counter[str]) -> None:
        self.handler = handler
        self.api_outcomes = api_outcomes

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "morag_jobs_updates", "Progress events by source and what became of them.",
            labels=["source", "outcome", "result"],
        )
        # Copied first (one C-level step each): other threads keep counting meanwhile.
        counts: Counter[tuple[str, str]] = Counter(dict(self.handler.stats.by_source))
        for outcome, n in dict(self.api_outcomes).items():
            counts["remote", outcome] += n
        for (source, outcome), n in sorted(counts.items()):
            family.add_metric([source, outcome, RESULTS.get(outcome, "rejected")], n)
        yield family
        stats = self.handler.stats
        writes = CounterMetricFamily("morag_jobs_writes", "Job rows written by this process.")
        writes.add_metric([], stats.writes)
        yield writes
        failed = CounterMetricFamily("morag_jobs_write_errors", "Job writes that failed.")
        failed.add_metric([], stats.write_errors)
        yield failed

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _JobsCollector(Collector):
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("morag_jobs_jobs", "Jobs per status.", labels=["status"])
        up = GaugeMetricFamily("morag_jobs_database_up", "1 when the job database answered.")
        try:
            counts = self.store.count_by_status()
        except StoreUnavailable:
            up.add_metric([], 0)
            yield up
            return
        for status, n in counts.items():
            family.add_metric([status.value], n)
        up.add_metric([], 1)
        yield family
        yield up

    def describe(self) -> Iterator[Metric]:
        return iter(())


class UpdateTimer:
    """ASGI middleware: observe the latency of every remote-worker request, by route."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.routes = {name: metrics.latency.labels(name)
                       for name in ("progress", "complete", "other")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(REMOTE_PREFIX):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = self.routes.get(path.rpartition("/")[2]) or self.routes["other"]
            route.observe(time.perf_counter() - started)


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format."}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this server process (no key needed, as scrapers expect)."""
    api_metrics: ApiMetrics = request.app.state.morag.metrics
    body = await run_in_threadpool(api_metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": ErrorBody, "description": "The job database is unreachable."}},
    summary="Liveness and database check",
)
async def healthz(request: Request) -> Any:
    """200 when the job database answers a query on the job table, else 503 (no key needed).

    Without a key the answer says only that: which database, and why it failed, are shown
    to an admin key alone (a URL names a user, a host and a database). A key that is not
    an admin's is not refused (a health check must not fail on it); it just sees less.
    """
    store: JobStore = request.app.state.morag.store
    admin = await _is_admin(request)
    try:
        await run_in_threadpool(store.list_jobs, limit=1)
    except StoreUnavailable as error:
        detail = ("the job database is not usable; check that it is running and migrated "
                  "('morag-jobs db upgrade')")
        if admin:
            detail = (f"job database {store.url} is not usable: {error.reason[:200]}; check "
                      "that it is running and migrated ('morag-jobs db upgrade')")
        return JSONResponse({"detail": detail}, status_code=503)
    return {"status": "ok", "database": store.url} if admin else {"status": "ok"}


async def _is_admin(request: Request) -> bool:
    key = bearer_token(request)
    if key is None:
        return False
    found = await request.app.state.morag.keys.verify(key)
    return found is not None and found.scope == "admin"

