"""Reading jobs: ``GET /api/v1/jobs``, ``/api/v1/jobs/{id}`` and its history.

User keys see only their user's jobs: someone else's job answers 404, exactly as a job
that does not exist, so a key learns nothing about jobs it may not read. Worker keys
read nothing (403); admin keys read everything.

A job is shown as ``JobView``: the stored job plus ``eta_seconds``, worked out when the
answer is made (``morag_jobs.eta.EtaEstimator``: one estimator per app, which reads each
job type's typical stage durations at most once a minute).
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from morag_jobs.api.auth import Principal, authenticate
from morag_jobs.api.remote import JobId
from morag_jobs.api.schemas import (
    BIGINT_MAX,
    ID_PATTERN,
    EventOut,
    EventPage,
    JobPage,
    JobView,
    errors,
)
from morag_jobs.eta import EtaEstimator
from morag_jobs.store import Family, Job, JobStatus, JobStore
from morag_jobs.store.reads import JobReads

__all__ = ["router"]

Sort = Literal[
    "created_at", "-created_at", "updated_at", "-updated_at",
    "percentage", "-percentage", "status", "-status",
]
Filter = Annotated[str | None, Query(min_length=1, max_length=255, pattern=ID_PATTERN)]

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
TOTAL_CAP = 10_000
"""The list's ``total`` is exact up to this many matching jobs, and a lower bound past it."""
_ESTIMATOR_LOCK = threading.Lock()


def _store(request: Request) -> JobStore:
    return request.app.state.morag.store  # type: ignore[no-any-return]


def _estimator(request: Request) -> EtaEstimator:
    """The app's ``EtaEstimator`` (made on first use), so its cache serves every request."""
    state = request.app.state
    estimator: EtaEstimator | None = getattr(state, "morag_eta", None)
    if estimator is None:
        with _ESTIMATOR_LOCK:
            estimator = getattr(state, "morag_eta", None)
            if estimator is None:
                estimator = state.morag_eta = EtaEstimator(_store(request))
    return estimator


def _readable(request: Request, principal: Principal, job_id: str) -> Job:
    principal.require_reader()
    job = _store(request).get_job(job_id, **principal.owner())
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} that this key may read; check the id")
    return job


@router.get("", response_model=JobPage, responses=errors(401, 403, 422, 503), summary="List jobs")
def list_jobs(
    *,
    request: Request,
    principal: Annotated[Principal, Depends(authenticate)],
    status: Annotated[list[JobStatus] | None, Query(description="Any of these statuses.")] = None,
    type: Filter = None,
    user: Filter = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    sort: Annotated[Sort, Query(description="A field; '-' first for descending.")]
    = "-created_at",
) -> Any:
    """Jobs matching every filter, newest first by default, a page at a time.

    A user key sees only its own user's jobs (a ``user`` filter naming another user
    gives an empty page); **403** for worker keys. ``total`` is exact up to 10,000
    matching jobs (or ``offset + limit + 1``, when more); beyond that counting stops,
    ``total_is_lower_bound`` is true and ``total`` is how far it counted.
    """
    principal.require_reader()
    if principal.scope == "user":
        if user is not None and user != principal.subject:
            return JobPage(items=[], total=0, limit=limit, offset=offset)
        user = principal.subject
    filters: dict[str, Any] = {"status": status or None, "user_id": user, "job_type": type}
    store = _store(request)
    jobs = store.list_jobs(**filters, limit=limit, offset=offset, order_by=sort)
    # Counted up to a cap, never a full count(*): past it, total is a lower bound that
    # still reaches past this page, so a client paging until offset + len(items) >= total
    # keeps going.
    counted = JobReads(store).count_jobs_up_to(max(TOTAL_CAP, offset + limit + 1), **filters)
    etas = _estimator(request).remaining_many(jobs)
    return JobPage(items=[JobView.of(job, etas[job.id]) for job in jobs], total=counted.total,
                   total_is_lower_bound=counted.lower_bound, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobView, responses=errors(401, 403, 404, 422, 503),
            summary="One job")
def get_job(
    job_id: JobId, request: Request, principal: Annotated[Principal, Depends(authenticate)]
) -> Any:
    """The job as stored, with its estimated time left (`eta_seconds`). **404** when there
    is none or the key may not read it."""
    job = _readable(request, principal, job_id)
    return JobView.of(job, _estimator(request).remaining(job))


@router.get("/{job_id}/children", response_model=JobPage,
            responses=errors(401, 403, 404, 422, 503), summary="A parent job's children")
def job_children(
    job_id: JobId,
    request: Request,
    principal: Annotated[Principal, Depends(authenticate)],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Any:
    """The children of a parent job (a Celery canvas), in the canvas's order, a page at a
    time; ``total`` is the parent's number of children (none for a job that is not one)."""
    parent = _readable(request, principal, job_id)
    kids = Family(_store(request)).children(job_id, limit=limit, offset=offset)
    etas = _estimator(request).remaining_many(kids)
    return JobPage(items=[JobView.of(kid, etas[kid.id]) for kid in kids],
                   total=parent.children, limit=limit, offset=offset)


@router.get("/{job_id}/events", response_model=EventPage,
            responses=errors(401, 403, 404, 422, 503), summary="A job's history")
def job_events(
    job_id: JobId,
    request: Request,
    principal: Annotated[Principal, Depends(authenticate)],
    after_id: Annotated[int | None, Query(ge=0, le=BIGINT_MAX,
                                          description="Only events after this one.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """The job's history (every applied update), oldest first, a page at a time."""
    _readable(request, principal, job_id)
    events = _store(request).history(job_id, limit=limit + 1, after_id=after_id)
    page = events[:limit]
    more = len(events) > limit
    return EventPage(items=[EventOut.of(event) for event in page],
                     next_after_id=page[-1].id if more else None)
