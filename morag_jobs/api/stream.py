"""Server-Sent Events: one job's updates until it ends, or every readable job's updates.

Updates are written by other processes (Celery workers, other server processes), so
the streams learn of them from the database, read every ``stream_poll_interval`` seconds
once for all the streams of the process (:mod:`morag_jobs.api.watch`): the watched jobs'
``version`` (job streams) or the jobs changed since (all-jobs streams). Events:

- ``job``: the job as it now is (JSON, as ``GET /api/v1/jobs/{id}``); the first one is
  the snapshot at connection time.
- ``history``: one row of the job's history written since the last poll (job stream).
- ``end``: the job has ended (or was deleted); the server then closes the stream.

A comment line (``: ping``) is sent every ``heartbeat_interval`` seconds so proxies
keep the connection open.

Each key may hold ``max_streams_per_key`` streams open at once in a server process
(**429** with ``Retry-After`` beyond), the process at most ``max_streams`` (**503**): an
open stream holds a connection and its share of the sending however little it
receives, so one client opening hundreds must not take the API from the workers
reporting progress. A stream gives its slot back when it ends or its client goes away.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from functools import partial
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from morag_jobs.api.auth import Principal, authenticate_stream
from morag_jobs.api.remote import JobId
from morag_jobs.api.schemas import ErrorBody, errors
from morag_jobs.api.watch import (
    JobFeed,
    JobWatch,
    SeenJobs,
    feed_text,
    history_text,
    job_text,
    sse,
)
from morag_jobs.events import utc_now
from morag_jobs.store import Job, JobStore
from morag_jobs.store.reads import JobReads

__all__ = ["DEFAULT_MAX_STREAMS", "StreamSlots", "router", "sse"]

HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DEFAULT_MAX_STREAMS: Final = 512
"""Open streams one server process holds at most: each is a socket (file descriptor)."""
RETRY_AFTER: Final = "10"


class StreamSlots:
    """How many streams each key holds open in this process, and the most it may.

    Only the event loop touches the counts, so they need no lock. Each server process
    counts its own streams: with ``--workers N`` a key may hold up to N times the limit.
    """

    def __init__(self, per_key: int, total: int = DEFAULT_MAX_STREAMS) -> None:
        for name, value in (("max_streams_per_key", per_key), ("max_streams", total)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1 (got {value})")
        self.per_key = per_key
        self.total = total
        self._open: Counter[str] = Counter()

    def held(self, key_id: str | None = None) -> int:
        """Streams open now: the key's, or all."""
        return self._open[key_id] if key_id is not None else self._open.total()

    def take(self, key_id: str) -> Callable[[], None]:
        """A slot for ``key_id`` and the call that gives it back (once); 429 or 503 if full."""
        if self._open[key_id] >= self.per_key:
            raise HTTPException(
                429, f"too many open streams for this key (the limit is {self.per_key} per "
                     "key); close one (one /api/v1/stream shows every job) and retry",
                headers={"Retry-After": RETRY_AFTER})
        if self._open.total() >= self.total:
            raise HTTPException(
                503, f"too many open streams on this server (the limit is {self.total}); "
                     "retry later", headers={"Retry-After": RETRY_AFTER})
        self._open[key_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[key_id] -= 1
                if self._open[key_id] <= 0:
                    del self._open[key_id]

        return release


class _HeldStream(StreamingResponse):
    """An event stream that gives its slot back however it ends: done, error, or client gone.

    Starlette notices a client that went away while the stream waits (it listens for
    ``http.disconnect`` beside the stream) and cancels the stream; the ``finally`` here
    runs then too, and closes the generator so its own ``finally`` (unwatching) runs now
    rather than whenever the garbage collector gets to it.
    """

    def __init__(self, events: AsyncGenerator[str, None], release: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=HEADERS)
        self._events = events
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            await self._events.aclose()


async def _job_events(state: Any, first: Job) -> AsyncGenerator[str, None]:
    store: JobStore = state.store
    watch: JobWatch = state.watch
    cursor = await run_in_threadpool(JobReads(store).last_event_id, first.id)
    yield f"retry: 2000\n{job_text(first)}"
    job = first
    if not job.status.is_terminal:
        watch.watch(job, cursor)
    try:
        while not job.status.is_terminal:
            change = await watch.changed(job.id, job.version, state.heartbeat_interval)
            if change is None:
                yield ": ping\n\n"
                continue
            if change.job is None:
                yield sse("end", {"job_id": job.id, "status": None, "reason": "deleted"})
                return
            history = change.history
            if cursor < change.after:  # missed a change: read the gap
                records = await run_in_threadpool(store.get_events, job.id, after_id=cursor)
                history = tuple((record.id, history_text(record)) for record in records)
            texts = [text for event_id, text in history if event_id > cursor]
            cursor = max([cursor, *(event_id for event_id, _ in history)])
            job = change.job
            yield "".join([*texts, change.text])  # one write: the sends are what streams cost
    finally:
        if not first.status.is_terminal:
            watch.unwatch(first.id)
    yield sse("end", {"job_id": job.id, "status": job.status.value, "reason": "ended"})


async def _all_events(state: Any, user_id: str | None) -> AsyncGenerator[str, None]:
    feed: JobFeed = state.feed
    heartbeat: float = state.heartbeat_interval
    yield "retry: 2000\n: connected\n\n"
    since, sent_at = utc_now(), time.monotonic()
    position = feed.listen()
    try:
        while True:
            quiet = time.monotonic() - sent_at
            if quiet >= heartbeat:
                yield ": ping\n\n"
                sent_at, quiet = time.monotonic(), 0.0
            position, batches = await feed.batches(position, heartbeat - quiet)
            if batches is None:  # fell behind what the feed keeps: read what it missed
                seen = SeenJobs(since)
                jobs = await run_in_threadpool(seen.read_changed, state.store, user_id)
                text, since = "".join(feed_text(job) for job in jobs), seen.cursor
            else:
                text = "".join(batch.text_for(user_id) for batch in batches)
                since = batches[-1].until if batches else since
            if text:  # one write per poll, not per job: with many streams, sends are the cost
                yield text
                sent_at = time.monotonic()
    finally:
        feed.leave()


router = APIRouter(prefix="/api/v1", tags=["streams"])
_STREAM_OK = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                    "description": "An event stream (`job`, `history`, `end` events)."}}
_STREAM_LIMITS: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": "This key holds as many open streams as it may; "
                                             "close one, or retry after `Retry-After` seconds."},
    503: {"model": ErrorBody, "description": "The job database is unreachable, or this server "
                                             "holds as many open streams as it may; retry "
                                             "after `Retry-After` seconds."},
}


@router.get(
    "/jobs/{job_id}/stream",
    response_class=StreamingResponse,
    responses={**_STREAM_OK, **errors(401, 403, 404, 422), **_STREAM_LIMITS},
    summary="Stream one job's updates (SSE) until it ends",
)
async def stream_job(
    job_id: JobId,
    request: Request,
    principal: Annotated[Principal, Depends(authenticate_stream)],
) -> StreamingResponse:
    """Server-Sent Events for one job: a ``job`` snapshot now, then ``history`` rows and
    ``job`` snapshots as it changes, ``end`` once it has ended, then the stream closes.

    The key may come as ``Authorization: Bearer`` or, for EventSource, as
    ``?access_token=``. **403** for worker keys; **404** for an unknown job or one the
    key may not read; **429** when the key already holds its most open streams (8 by
    default), **503** when the server does.
    """
    principal.require_reader()
    state = request.app.state.morag
    job = await run_in_threadpool(partial(state.store.get_job, job_id, **principal.owner()))
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} that this key may read")
    release = state.stream_slots.take(principal.key_id)
    return _HeldStream(_job_events(state, job), release)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={**_STREAM_OK, **errors(401, 403), **_STREAM_LIMITS},
    summary="Stream updates of every job the key may read (SSE)",
)
async def stream_all(
    request: Request,
    principal: Annotated[Principal, Depends(authenticate_stream)],
) -> StreamingResponse:
    """Server-Sent Events: a ``job`` event each time a job changes, from about the time of
    connecting (the last 2 s included); a user key sees its own jobs, an admin key all.
    For the dashboard: list jobs with ``GET /api/v1/jobs`` first, then apply these (the
    event id is ``<job id>:<version>``; a version not above the one shown is old news,
    as a stream that fell far behind may send one again). It never ends by itself.

    The key may come as ``Authorization: Bearer`` or ``?access_token=``. **403** for
    worker keys; **429** when the key already holds its most open streams (8 by default),
    **503** when the server does.
    """
    principal.require_reader()
    user_id = principal.subject if principal.scope == "user" else None
    state = request.app.state.morag
    release = state.stream_slots.take(principal.key_id)
    return _HeldStream(_all_events(state, user_id), release)
