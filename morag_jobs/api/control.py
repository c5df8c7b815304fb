"""Making and cancelling jobs over HTTP: ``POST /api/v1/jobs``, ``POST .../{id}/cancel``.

What a server-side Python script did with ``handler.create_job`` and
``register_job_mapping``, a remote worker's operator does with one request (or
``morag-jobs create``): a job, optionally assigned to a worker id, whose key may then
report on it. A worker may hold many jobs at once (each assigned by ``worker_id``), and an
assignment never takes a job away from another. The job is made through the handler, so
listeners (the API cache, the stream, webhooks) see it like any other.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from morag_jobs.api.auth import Principal, authenticate
from morag_jobs.api.remote import JobId
from morag_jobs.api.schemas import JobCreate, JobOut, errors
from morag_jobs.errors import JobExists
from morag_jobs.handler import ProgressHandler
from morag_jobs.stages import StagePlan
from morag_jobs.store import JobStatus

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=JobOut,
             responses=errors(401, 403, 409, 413, 422, 503), summary="Create a job")
async def create_job(
    body: JobCreate, request: Request, principal: Annotated[Principal, Depends(authenticate)]
) -> Any:
    """A new PENDING job. User keys make jobs of their own user; admin keys may name any
    ``user_id``; worker keys make none (**403**). With ``worker_id`` the job is assigned
    to that worker (its key reports on it) and, with ``lease_seconds``, failed when the
    worker goes that long without a report. **409** when ``job_id`` is taken."""
    principal.require_reader()
    if principal.scope == "user":
        if body.user_id not in (None, principal.subject):
            raise HTTPException(403, "a user key makes jobs for its own user only; leave "
                                     "user_id out or use an admin key")
        user_id = principal.subject
    else:
        user_id = body.user_id
    try:
        lease = body.lease()
        stages = StagePlan(body.stages) if body.stages is not None else None
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    handler: ProgressHandler = request.app.state.morag.handler
    fields: dict[str, Any] = {
        "name": body.name, "job_type": body.job_type, "user_id": user_id, "stages": stages,
        "job_id": body.job_id, "metadata": body.metadata, "worker_id": body.worker_id,
        "claim": "remote" if body.worker_id is not None else None, "lease_seconds": lease,
    }
    try:
        job = await run_in_threadpool(lambda: handler.create_job(**fields))
    except JobExists:
        raise HTTPException(409, f"a job {body.job_id!r} exists already; choose another id "
                                 "or leave job_id out") from None
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut,
             responses=errors(401, 403, 404, 409, 422, 503), summary="Cancel a job")
async def cancel_job(
    job_id: JobId, request: Request, principal: Annotated[Principal, Depends(authenticate)]
) -> Any:
    """CANCELLED now, keeping the percentage reached; a task still running it stops at its
    next progress report (``JobCancelled``), within about one write interval. The job's
    owner (a user key) or an admin may; **404** for a job the key may not read, **409**
    for one that already ended."""
    principal.require_reader()
    state = request.app.state.morag
    job = await run_in_threadpool(partial(state.store.get_job, job_id, **principal.owner()))
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} that this key may read; check the id")
    if job.status.is_terminal:
        raise HTTPException(409, f"job {job_id} already ended ({job.status.value})")
    who = f"user {principal.subject}" if principal.scope == "user" else "an admin"
    handler: ProgressHandler = state.handler
    await run_in_threadpool(handler.handle_job_cancellation, job_id, f"cancelled by {who}")
    ended = await run_in_threadpool(state.store.require_job, job_id)
    if ended.status is not JobStatus.CANCELLED:
        raise HTTPException(409, f"job {job_id} ended ({ended.status.value}) before it could "
                                 "be cancelled")
    return JobOut.of(ended)
