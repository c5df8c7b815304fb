"""Server-Sent Events: one job's updates until it ends, or every readable job's updates.

Updates are written by other processes (Celery workers, other server processes), so
the streams poll the database: the job's ``version`` (one job) or ``updated_at`` (all
jobs) every ``stream_poll_interval`` seconds, and send what changed. Events:

- ``job``: the job as it now is (JSON, as ``GET /api/v1/jobs/{id}``); the first one is
  the snapshot at connection time.
- ``history``: one row of the job's history written since the last poll (job stream).
- ``end``: the job has ended (or was deleted); the server then closes the stream.

A comment line (``: ping``) is sent every ``heartbeat_interval`` seconds so proxies
keep the connection open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, cast

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Table, func, select
from starlette.concurrency import run_in_threadpool

from morag_jobs.api.auth import Principal, authenticate_stream
from morag_jobs.api.remote import JobId
from morag_jobs.api.schemas import errors, job_json
from morag_jobs.events import utc_now
from morag_jobs.store import Job, JobStore
from morag_jobs.store.models import JobEventRow

__all__ = ["router", "sse"]

EVENTS = cast(Table, JobEventRow.__table__)
OVERLAP: Final = timedelta(seconds=2)
"""The all-jobs stream re-reads this far back: a write committed late is still seen."""
PAGE: Final = 500
HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    """One Server-Sent Event; ``data`` as compact JSON on one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Ticker:
    """Wait for the next poll, and say when a heartbeat comment is due."""

    def __init__(self, poll: float, heartbeat: float) -> None:
        self.poll = poll
        self.heartbeat = heartbeat
        self.last_sent = time.monotonic()

    async def wait(self) -> str | None:
        await asyncio.sleep(self.poll)
        if time.monotonic() - self.last_sent >= self.heartbeat:
            self.sent()
            return ": ping\n\n"
        return None

    def sent(self) -> None:
        self.last_sent = time.monotonic()


def _last_event_id(store: JobStore, job_id: str) -> int:
    with store.engine.connect() as connection:
        query = select(func.max(EVENTS.c.id)).where(EVENTS.c.job_id == job_id)
        return int(connection.scalar(query) or 0)


async def _job_events(state: Any, first: Job) -> AsyncIterator[str]:
    store: JobStore = state.store
    ticker = _Ticker(state.stream_poll_interval, state.heartbeat_interval)
    cursor = await run_in_threadpool(_last_event_id, store, first.id)
    yield f"retry: 2000\n{sse('job', job_json(first), str(first.version))}"
    job: Job | None = first
    while job is not None and not job.status.is_terminal:
        ping = await ticker.wait()
        if ping:
            yield ping
        fresh = await run_in_threadpool(store.get_job, first.id)
        if fresh is None:
            yield sse("end", {"job_id": first.id, "status": None, "reason": "deleted"})
            return
        if fresh.version != job.version:
            history = await run_in_threadpool(store.get_events, first.id, after_id=cursor)
            for record in history:
                yield sse("history", record.to_dict())
                cursor = record.id
            yield sse("job", job_json(fresh), str(fresh.version))
            ticker.sent()
        job = fresh
    if job is not None:
        yield sse("end", {"job_id": job.id, "status": job.status.value, "reason": "ended"})


async def _all_events(state: Any, user_id: str | None) -> AsyncIterator[str]:
    store: JobStore = state.store
    ticker = _Ticker(state.stream_poll_interval, state.heartbeat_interval)
    cursor: datetime = utc_now()
    seen: dict[str, tuple[int, datetime]] = {}
    yield "retry: 2000\n: connected\n\n"
    while True:
        offset = 0
        while True:
            jobs = await run_in_threadpool(
                store.list_jobs, user_id=user_id, updated_after=cursor - OVERLAP, limit=PAGE,
                offset=offset, order_by="updated_at",
            )
            for job in jobs:
                if seen.get(job.id, (-1, cursor))[0] < job.version:
                    seen[job.id] = (job.version, job.updated_at or cursor)
                    yield sse("job", job_json(job), f"{job.id}:{job.version}")
                    ticker.sent()
            offset += len(jobs)
            if len(jobs) < PAGE:
                break
        cursor = max([cursor, *(at for _, at in seen.values())])
        horizon = cursor - OVERLAP * 2
        for job_id in [key for key, (_, at) in seen.items() if at < horizon]:
            del seen[job_id]
        ping = await ticker.wait()
        if ping:
            yield ping


router = APIRouter(prefix="/api/v1", tags=["streams"])
_STREAM_OK = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                    "description": "An event stream (`job`, `history`, `end` events)."}}


@router.get(
    "/jobs/{job_id}/stream",
    response_class=StreamingResponse,
    responses={**_STREAM_OK, **errors(401, 403, 404, 422, 503)},
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
    key may not read.
    """
    principal.require_reader()
    state = request.app.state.morag
    job = await run_in_threadpool(state.store.get_job, job_id)
    if job is None or not principal.may_read(job):
        raise HTTPException(404, f"no job {job_id!r} that this key may read")
    return StreamingResponse(_job_events(state, job), media_type="text/event-stream",
                             headers=HEADERS)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={**_STREAM_OK, **errors(401, 403, 503)},
    summary="Stream updates of every job the key may read (SSE)",
)
async def stream_all(
    request: Request,
    principal: Annotated[Principal, Depends(authenticate_stream)],
) -> StreamingResponse:
    """Server-Sent Events: a ``job`` event each time a job changes, from about the time of
    connecting (the last 2 s included); a user key sees its own jobs, an admin key all.
    For the dashboard: list jobs with ``GET /api/v1/jobs`` first, then apply these (the
    event id is ``<job id>:<version>``; a version not above the one shown is old news).
    It never ends by itself.

    The key may come as ``Authorization: Bearer`` or ``?access_token=``. **403** for
    worker keys.
    """
    principal.require_reader()
    user_id = principal.subject if principal.scope == "user" else None
    return StreamingResponse(_all_events(request.app.state.morag, user_id),
                             media_type="text/event-stream", headers=HEADERS)
