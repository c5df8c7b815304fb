"""Server-Sent Events: one job's updates until it ends, or every readable job's updates.

Updates are written by other processes (Celery workers, other server processes), so the
streams learn of them from the database -- read once per ``stream_poll_interval`` for all
the streams of the process by its :class:`~morag_jobs.api.watch.StreamWatcher`, which
hands each stream what its key may read. Events:

- ``job``: the job as it now is (JSON, as ``GET /api/v1/jobs/{id}``); the first one is
  the snapshot at connection time.
- ``history``: one row of the job's history written since (job stream).
- ``end``: the job has ended (or was deleted); the server then closes the stream.

A comment line (``: ping``) is sent every ``heartbeat_interval`` seconds so proxies
keep the connection open.

Every event but ``end`` has an ``id``; a client that reconnects with it (EventSource
sends ``Last-Event-ID`` by itself; ``?last_event_id=`` works on a first connection)
resumes: a job stream gets exactly the ``history`` rows written after it, from the
database, then its snapshot and the live events; the all-jobs stream gets the jobs
changed since (and in the ``OVERLAP`` before, for writes committed late), then live ones.

Each key may hold ``max_streams_per_key`` streams open at once in a server process
(**429** with ``Retry-After`` beyond), the process at most ``max_streams`` (**503**): an
open stream holds a connection and its share of the sending however little it
receives, so one client opening hundreds must not take the API from the workers
reporting progress. A stream gives its slot back when it ends or its client goes away.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from morag_jobs.api.auth import Principal, authenticate_stream
from morag_jobs.api.remote import JobId
from morag_jobs.api.schemas import ErrorBody, errors
from morag_jobs.api.watch import (
    OVERLAP,
    FeedCursor,
    JobUpdate,
    StreamWatcher,
    feed_texts,
    history_text,
    job_body,
    sse,
)
from morag_jobs.events import utc_now
from morag_jobs.store import Job
from morag_jobs.store.reads import JobStart

__all__ = ["DEFAULT_MAX_STREAMS", "StreamSlots", "router", "sse"]

HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DEFAULT_MAX_STREAMS: Final = 512
"""Open streams one server process holds at most: each is a socket (file descriptor)."""
RETRY_AFTER: Final = "10"
RETRY: Final = "retry: 2000\n"
PING: Final = ": ping\n\n"
SETTLE_PATIENCE: Final = 5.0


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


@dataclass(slots=True)
class _Position:
    """What a job stream has sent: the newest history row id and job version."""

    job: Job | None
    """None: the job was deleted."""
    cursor: int
    body: str = ""
    """The ``job`` event of ``job`` without its id, when the watcher formatted it."""
    sent: int = -1

    def apply(self, updates: Iterable[JobUpdate]) -> list[str]:
        """The events of ``updates`` not sent yet: each history row once, in order (a job's
        row ids only grow, as its writes take turns on its row: one cursor is enough)."""
        texts = []
        for update in updates:
            if update.deleted:
                self.job = None
                break
            for event_id, text in update.history:
                if event_id > self.cursor:
                    texts.append(text)
                    self.cursor = event_id
            if update.job is not None and self.job is not None \
                    and update.job.version > self.job.version:
                self.job, self.body = update.job, update.body
        return texts

    def caught_up(self, start: JobStart) -> list[str]:
        """The events of what was read from the database after the cursor."""
        ended = self.job is not None and self.job.status.is_terminal
        if start.job is None and ended:  # deleted after it ended: it ended
            start = JobStart(self.job, start.history, start.cursor)
        rows = tuple((record.id, history_text(record)) for record in start.history)
        return self.apply([JobUpdate(start.job, "", rows, deleted=start.job is None)])

    def snapshot(self) -> str:
        assert self.job is not None
        self.sent = self.job.version
        return f"id: {self.cursor}\n{self.body or job_body(self.job)}"

    def end(self, job_id: str) -> str:
        if self.job is None:
            return sse("end", {"job_id": job_id, "status": None, "reason": "deleted"})
        return sse("end", {"job_id": job_id, "status": self.job.status.value, "reason": "ended"})


async def _job_events(
    state: Any, job_id: str, user_id: str | None, resume: int | None
) -> AsyncGenerator[str, None]:
    """A job's events: its history after ``resume`` (if given), its snapshot, then what
    changes, until it ends."""
    watcher: StreamWatcher = state.watcher
    heartbeat: float = state.heartbeat_interval
    follower = watcher.follow_job(job_id)
    try:
        # No row may fall between its start, read next, and the polls: wait for the one in
        # flight. Quietly at first (the snapshot comes first), then with the heartbeats.
        while not await watcher.settled(max(heartbeat, SETTLE_PATIENCE)):
            yield PING
        start = await _job_since(watcher, job_id, resume, user_id)
        at = _Position(start.job, start.cursor)
        parts = [RETRY, *(history_text(record) for record in start.history)]
        read_now = True  # the job and its history come from the database just now
        while at.job is not None:
            if at.job.version > at.sent:
                if at.job.status.is_terminal and not read_now:
                    # Every row written up to its end comes before the snapshot that ends it.
                    parts += at.caught_up(await _job_since(watcher, job_id, at.cursor, user_id))
                parts.append(at.snapshot())
            if at.job.status.is_terminal:
                break
            if parts:
                yield "".join(parts)  # one write per poll: the sends are what streams cost
                parts = []
            if not await follower.wait(heartbeat):
                yield PING
                continue
            updates, read_now = follower.take()
            if read_now:  # its client fell behind its inbox: read what it missed instead
                parts += at.caught_up(await _job_since(watcher, job_id, at.cursor, user_id))
            else:
                parts += at.apply(updates)
        yield "".join([*parts, at.end(job_id)])
    finally:
        watcher.leave(follower)


async def _job_since(watcher: StreamWatcher, job_id: str, after_id: int | None,
                     user_id: str | None) -> JobStart:
    return await run_in_threadpool(partial(watcher.reads.job_since, job_id, after_id,
                                           user_id=user_id))


async def _all_events(
    state: Any, user_id: str | None, resume: FeedCursor | None
) -> AsyncGenerator[str, None]:
    """Every readable job's changes: from the cursor ``resume``, else from about now."""
    watcher: StreamWatcher = state.watcher
    heartbeat: float = state.heartbeat_interval
    follower = watcher.follow_feed(user_id, recent=resume is None)
    connected = utc_now()
    cursor = resume
    try:
        text = ""
        if resume is not None:
            text, cursor = await _read_feed(watcher, user_id, resume, connected)
        yield f"{RETRY}: connected\n\n{text}"
        sent_at = time.monotonic()
        while True:
            quiet = time.monotonic() - sent_at
            if quiet >= heartbeat:
                yield PING
                sent_at, quiet = time.monotonic(), 0.0
            if not await follower.wait(heartbeat - quiet):
                continue
            items, overflowed = follower.take()
            if overflowed:  # its client fell behind its inbox: read what it missed instead
                text, cursor = await _read_feed(watcher, user_id, cursor, connected)
            else:
                text = "".join(item for item, _ in items)
                cursor = _newest(cursor, (position for _, position in items))
            if text:  # one write per poll, not per job: with many streams, sends are the cost
                yield text
                sent_at = time.monotonic()
    finally:
        watcher.leave(follower)


async def _read_feed(watcher: StreamWatcher, user_id: str | None, cursor: FeedCursor | None,
                     connected: datetime) -> tuple[str, FeedCursor | None]:
    """The events of the jobs changed since ``cursor`` (less the overlap), from the database."""
    since = (cursor.at if cursor is not None else connected) - OVERLAP
    jobs: tuple[Job, ...] = await run_in_threadpool(
        partial(watcher.reads.jobs_changed, since, user_id=user_id))
    texts, cursor = feed_texts(jobs, cursor, connected)
    return "".join(text for _, text in texts), cursor


def _newest(cursor: FeedCursor | None, positions: Iterable[FeedCursor | None]
            ) -> FeedCursor | None:
    for position in positions:
        if position is not None and (cursor is None or position > cursor):
            cursor = position
    return cursor


def _resume(header: str | None, query: str | None, parse: Callable[[str], Any]) -> Any:
    """Where a stream resumes: ``Last-Event-ID`` (sent by EventSource when it reconnects,
    so newer than the URL's) else ``?last_event_id=``. A header that is no id of this
    stream is ignored (an EventSource cannot change it); a bad query parameter is a 422."""
    if header is not None and header.strip():
        position = parse(header)
        if position is not None:
            return position
    if query is None or not query.strip():
        return None
    position = parse(query)
    if position is None:
        raise HTTPException(422, f"last_event_id {query[:64]!r} is not an event id of this "
                                 "stream; send one it sent, or none to start afresh")
    return position


def _history_id(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


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


_LAST_EVENT_ID = Annotated[str | None, Header(
    alias="Last-Event-ID", max_length=200,
    description="The id of the last event received: EventSource sends it when it reconnects.")]


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
    last_event_id: Annotated[str | None, Query(
        max_length=200, description="Resume after this event id (a `history` row's id): "
                                    "for a first connection; `Last-Event-ID` wins.")] = None,
    last_event_id_header: _LAST_EVENT_ID = None,
) -> StreamingResponse:
    """Server-Sent Events for one job: a ``job`` snapshot now, then ``history`` rows and
    ``job`` snapshots as it changes, ``end`` once it has ended, then the stream closes.

    Each ``history`` event's id is its row's id, and each ``job`` event's the id of the
    last row sent before it. Resumed with one of them (``Last-Event-ID``, as EventSource
    reconnects, or ``?last_event_id=``) the stream first sends every history row written
    after it, then the snapshot, then goes on live: no row twice, none missing.

    The key may come as ``Authorization: Bearer`` or, for EventSource, as
    ``?access_token=``. **403** for worker keys; **404** for an unknown job or one the
    key may not read; **422** for a ``last_event_id`` that is no row id; **429** when the
    key already holds its most open streams (8 by default), **503** when the server does.
    """
    principal.require_reader()
    resume = _resume(last_event_id_header, last_event_id, _history_id)
    state = request.app.state.morag
    job = await run_in_threadpool(partial(state.store.get_job, job_id, **principal.owner()))
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} that this key may read")
    release = state.stream_slots.take(principal.key_id)
    user_id = principal.owner().get("user_id")
    return _HeldStream(_job_events(state, job_id, user_id, resume), release)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={**_STREAM_OK, **errors(401, 403, 422), **_STREAM_LIMITS},
    summary="Stream updates of every job the key may read (SSE)",
)
async def stream_all(
    request: Request,
    principal: Annotated[Principal, Depends(authenticate_stream)],
    last_event_id: Annotated[str | None, Query(
        max_length=200, description="Resume from this event id (`<updated_at in epoch "
                                    "microseconds>-<job id>`): for a first connection; "
                                    "`Last-Event-ID` wins.")] = None,
    last_event_id_header: _LAST_EVENT_ID = None,
) -> StreamingResponse:
    """Server-Sent Events: a ``job`` event each time a job changes, from about the time of
    connecting (the last 2 s included); a user key sees its own jobs, an admin key all.
    For the dashboard: list jobs with ``GET /api/v1/jobs`` first, then apply these (a
    ``version`` not above the one shown is old news: a resumed stream, or one that fell
    far behind, may send one again). It never ends by itself.

    Each event's id is a cursor, ``<updated_at in epoch microseconds>-<job id>``, that
    never goes back. Resumed with one (``Last-Event-ID``, as EventSource reconnects, or
    ``?last_event_id=``) the stream first sends every readable job changed since that
    cursor (and in the 2 s before it, which a write committed late may have), then goes
    on live.

    The key may come as ``Authorization: Bearer`` or ``?access_token=``. **403** for
    worker keys; **422** for a ``last_event_id`` that is no cursor; **429** when the key
    already holds its most open streams (8 by default), **503** when the server does.
    """
    principal.require_reader()
    resume = _resume(last_event_id_header, last_event_id, FeedCursor.parse)
    user_id = principal.subject if principal.scope == "user" else None
    state = request.app.state.morag
    release = state.stream_slots.take(principal.key_id)
    return _HeldStream(_all_events(state, user_id, resume), release)
