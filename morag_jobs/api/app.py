"""``create_app``: the FastAPI application, wired to one store and one ``ProgressHandler``.

The app is assembled from routers (``remote``, ``jobs``, ``stream``, ``metrics``); more
can be added with ``app.include_router``. Everything the routes share lives in
``app.state.morag`` (:class:`ApiState`).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from morag_jobs import __version__, _config, settings, webhooks
from morag_jobs.api import control, dashboard, jobs, metrics, remote, schema_route, stream
from morag_jobs.api.auth import ApiKeys
from morag_jobs.api.metrics import ApiMetrics, UpdateTimer
from morag_jobs.api.remote import JobCache
from morag_jobs.api.schemas import ProgressUpdate
from morag_jobs.api.stream import DEFAULT_MAX_STREAMS, StreamSlots
from morag_jobs.api.watch import StreamWatcher
from morag_jobs.errors import StoreUnavailable
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStore

__all__ = ["ApiState", "BodySizeLimit", "create_app", "create_app_from_settings"]

DEFAULT_MAX_BODY_BYTES = 64 * 1024
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_REFUSALS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
             413: "too_large", 422: "invalid"}
"""Status of a refused progress report to its outcome in ``morag_jobs_updates_total``."""


@dataclass(slots=True)
class ApiState:
    """What the routes share: ``request.app.state.morag``."""

    store: JobStore
    handler: ProgressHandler
    keys: ApiKeys
    jobs: JobCache
    metrics: ApiMetrics
    max_body_bytes: int
    stream_poll_interval: float
    heartbeat_interval: float
    stream_slots: StreamSlots
    watcher: StreamWatcher
    """The one database poll of this process behind every open stream."""


def create_app(
    store: JobStore | None = None,
    handler: ProgressHandler | None = None,
    *,
    database_url: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cache_ttl: float = 1.0,
    write_interval: float = _config.WRITE_INTERVAL,
    stream_poll_interval: float = _config.STREAM_POLL_INTERVAL,
    heartbeat_interval: float = 15.0,
    max_streams_per_key: int | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
    freeze_gc: bool = False,
    webhook_secret: str | None = None,
) -> FastAPI:
    """The HTTP API and dashboard over ``store`` (or one on ``database_url``) and ``handler``.

    With a webhook secret (``webhook_secret`` or ``MORAG_WEBHOOK_SECRET``) the app also
    runs a ``WebhookDeliverer`` that sends the completion webhooks every process queues.

    Without a handler the app makes one that never creates jobs (an unknown job is a
    404) and writes each job at most every ``write_interval`` seconds. At shutdown the
    app closes what it made and flushes a handler it was given. ``cache_ttl`` bounds how
    stale the job snapshots behind progress checks and the API-key cache may be (so also
    how long a revoked key keeps working in a running server). ``freeze_gc`` moves what
    exists at startup out of the garbage collector's sight (``gc.freeze``): a server
    process then pays for a full collection only over what it allocated since, not over
    every imported module (tens of milliseconds, during which no request is answered).
    ``max_streams_per_key`` (default ``MORAG_API_MAX_STREAMS_PER_KEY``, 8) and
    ``max_streams`` bound the event streams open at once per key and in all.
    """
    owns_store = store is None and handler is None
    if store is None:
        store = handler.store if handler is not None else JobStore(database_url)
    elif handler is not None and handler.store is not store:
        raise ValueError("handler.store must be the store passed to create_app")
    owns_handler = handler is None
    if handler is None:
        handler = ProgressHandler(store=store, interval=write_interval, auto_create_jobs=False)
    webhooks.attach_outbox(handler)
    job_cache = JobCache(store, ttl=cache_ttl)
    handler.add_listener(job_cache.remember)
    state = ApiState(
        store=store, handler=handler, keys=ApiKeys(store, cache_ttl=cache_ttl),
        jobs=job_cache, metrics=ApiMetrics(handler, store), max_body_bytes=max_body_bytes,
        stream_poll_interval=stream_poll_interval, heartbeat_interval=heartbeat_interval,
        stream_slots=StreamSlots(
            settings.api_max_streams_per_key() if max_streams_per_key is None
            else max_streams_per_key, max_streams),
        watcher=StreamWatcher(store, stream_poll_interval),
    )

    secret = settings.webhook_secret() if webhook_secret is None else webhook_secret
    deliverer = webhooks.WebhookDeliverer(store, secret=secret) if secret else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if freeze_gc:
            gc.collect()
            gc.freeze()
        if deliverer is not None:
            deliverer.start()  # sends what any process queued in the webhook outbox
        state.watcher.start()  # polls only while streams are open
        yield
        await state.watcher.stop()
        if deliverer is not None:
            deliverer.stop()
        handler.remove_listener(job_cache.remember)
        job_cache.close()
        state.keys.close()
        if owns_handler:
            handler.close()
        else:
            handler.flush()
        if owns_store:
            store.close()

    app = FastAPI(
        title="morag-jobs",
        version=__version__,
        summary="Durable job progress: remote workers report, people and systems read.",
        lifespan=lifespan,
    )
    app.state.morag = state
    app.openapi = _with_schemas(app, ProgressUpdate)  # type: ignore[method-assign]
    for router in (remote.router, control.router, jobs.router, stream.router, metrics.router,
                   dashboard.router, schema_route.router):
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _unavailable)
    # The last added runs first: time the whole request, size limit included.
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, on_refused=_count_refusal(state))
    app.add_middleware(UpdateTimer, metrics=state.metrics)
    return app


def create_app_from_settings() -> FastAPI:
    """The app on ``MORAG_DATABASE_URL``: the factory ``morag-jobs serve --workers N`` uses."""
    return create_app(database_url=settings.database_url(), freeze_gc=True)


def _with_schemas(app: FastAPI, *models: type[BaseModel]) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` that also lists request models a route documents by hand."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            found = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                found[model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
        return app.openapi_schema or generate()

    return openapi


# -- errors ---------------------------------------------------------------------------------


def _count_refusal(state: ApiState) -> Callable[[Scope, int], None]:
    def count(scope: Scope, status: int) -> None:
        path = scope.get("path", "")
        outcome = _REFUSALS.get(status)
        if outcome and path.startswith(metrics.REMOTE_PREFIX) and path.endswith("/progress"):
            state.metrics.count_update(outcome)

    return count


def _clean(value: Any) -> str:
    """Text from a request, safe to echo back: valid UTF-8, at most 200 characters."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 200 else f"{text[:200]}..."


async def _invalid(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = [
        {"loc": [_clean(part) for part in item.get("loc", ())], "msg": _clean(item.get("msg")),
         "type": _clean(item.get("type"))}
        for item in error.errors()[:20]
    ]
    summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems[:3])
    _count_refusal(request.app.state.morag)(request.scope, 422)
    return JSONResponse(
        {"detail": f"invalid request ({summary}); fix it and send it again", "errors": problems},
        status_code=422,
    )


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    _count_refusal(request.app.state.morag)(request.scope, error.status_code)
    return JSONResponse({"detail": _clean(error.detail) if error.detail else "error"},
                        status_code=error.status_code, headers=error.headers)


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    store: JobStore = request.app.state.morag.store
    return JSONResponse(
        {"detail": f"the job database {store.url} is unavailable; retry in a few seconds"},
        status_code=503, headers={"Retry-After": "5"},
    )


# -- request size ---------------------------------------------------------------------------


class BodySizeLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before reading; one within
    it cannot be exceeded (the server frames the body by it). A body without one
    (chunked) is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int,
        on_refused: Callable[[Scope, int], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await self._refuse(scope, send)
            else:
                # HTTP/1.1 framing: the server hands the app at most Content-Length bytes.
                await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): count what arrives, refusing past the limit.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks),
                                "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if self.on_refused is not None:
            self.on_refused(scope, 413)
        response = JSONResponse(
            {"detail": f"request body is larger than {self.max_bytes} bytes; send less (a "
                       "shorter message or result)"},
            status_code=413, headers={"Connection": "close"},
        )
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses such a request before the app sees it
    return None
