"""Remote workers report over HTTP: ``PUT .../progress`` and ``POST .../complete``.

Progress takes the coalesced path by default: the report is checked against a short-lived
(``cache_ttl``, 1 s) snapshot of the job, handed to ``ProgressHandler.apply`` (which only
queues it in memory) and answered 202; the handler's writer thread writes the job at
most once per interval. The request costs no query while the snapshot is fresh, which
is what lets one server take thousands of reports a second. ``?wait=true`` writes now
and answers with the job as written. Completion is always written before answering.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from morag_jobs.api.auth import Principal, bearer_token, principal_of
from morag_jobs.api.cache import RefreshingCache
from morag_jobs.api.schemas import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    Completion,
    JobOut,
    ProgressUpdate,
    UpdateAccepted,
    errors,
    job_json,
)
from morag_jobs.events import ProgressEvent
from morag_jobs.handler import ProgressHandler, arrived
from morag_jobs.rules import staleness
from morag_jobs.store import Job, JobStore
from morag_jobs.store.reads import JobCheck, JobReads

__all__ = ["JobCache", "JobCheck", "JobId", "router"]

JobId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, description="Job id.")
]
_SENT_LIMIT = 100_000
_Model = TypeVar("_Model", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class _Sent:
    """The newest report this process queued for a job (for retries not yet written)."""

    sequence: int | None
    timestamp: datetime
    clock: str
    content: tuple[Any, ...]


def _newer(old: JobCheck | None, new: JobCheck | None) -> JobCheck | None:
    if old is not None and new is not None and old.version > new.version:
        return old
    return new


class JobCache:
    """Job snapshots for the checks of a progress report (404, 409), at most ``ttl`` old.

    Every write by this process's handler refreshes its snapshot (a listener), so only
    changes made by *other* processes can be up to ``ttl`` seconds late: a report on a
    job another process ended less than ``ttl`` ago is answered 202 and then ignored by
    the handler (counted as ``terminal``), never applied.
    """

    def __init__(self, store: JobStore, *, ttl: float = 1.0) -> None:
        self.store = store
        self.jobs: RefreshingCache[str, JobCheck] = RefreshingCache(
            self._load_jobs, ttl=ttl, name="job", merge=_newer
        )
        self.workers: RefreshingCache[str, str] = RefreshingCache(
            self._load_mappings, ttl=ttl, name="worker-mapping"
        )
        self._sent: dict[str, _Sent] = {}

    async def get(self, job_id: str) -> JobCheck | None:
        return await self.jobs.get(job_id)

    def remember(self, _event_type: str, job: Job) -> None:
        """Handler listener: keep the snapshot of a job this process just wrote; forget
        what was sent for a job that ended (no retry of it can change anything now)."""
        self.jobs.update(job.id, JobCheck.of(job))
        if job.status.is_terminal:
            self._sent.pop(job.id, None)

    def close(self) -> None:
        self.jobs.close()
        self.workers.close()

    # -- worker ownership ----------------------------------------------------------------

    async def may_report(self, principal: Principal, job: JobCheck) -> bool:
        """Admins report on any job; a worker on jobs assigned or mapped to it."""
        if principal.scope == "worker" and principal.subject is not None:
            if job.worker_id == principal.subject:
                return True
            return await self.workers.get(principal.subject) == job.id
        return principal.scope == "admin"

    async def owned_now(self, principal: Principal, job_id: str) -> JobCheck | None:
        """The job read now with the key's owner in the query; refreshes the snapshot.

        A refusal from the snapshot is confirmed here before it is answered, so a job
        assigned or mapped less than ``ttl`` ago is not refused while the cache catches up.
        """
        job = await run_in_threadpool(partial(self.store.get_job, job_id, **principal.owner()))
        if job is None:
            return None
        check = JobCheck.of(job)
        self.jobs.update(job_id, check)
        if principal.subject is not None and job.worker_id != principal.subject:
            self.workers.update(principal.subject, job_id)
        return check

    # -- retries -------------------------------------------------------------------------

    def repeat_of(self, job: JobCheck, event: ProgressEvent) -> str | None:
        """``duplicate`` or ``stale`` when the report changes nothing, else None.

        Judged by ``rules.staleness`` against the job and the report this process queued
        for it: older is stale, the same sequence is a retry, and so is the same timestamp
        (of the same clock) with the same content.
        """
        sent = self._sent.get(job.id)
        queued = () if sent is None else ((sent.sequence, sent.timestamp, sent.clock),)
        where = staleness(event, (job.last_sequence, job.last_event_at, job.last_event_clock),
                          *queued)
        if where != "same_time":
            return "duplicate" if where == "repeat" else where
        same_as_sent = sent is not None and sent.content == _content(event)
        same_as_row = job.last_event_at == event.timestamp and job.summary == event.message
        return "duplicate" if same_as_sent or same_as_row else None

    def sent(self, job_id: str, event: ProgressEvent) -> None:
        before = self._sent.get(job_id)
        sequence = event.sequence
        if before is not None and before.sequence is not None:
            sequence = before.sequence if sequence is None else max(sequence, before.sequence)
        if len(self._sent) >= _SENT_LIMIT:
            self._sent.clear()
        if before is None or before.clock != event.clock or event.timestamp >= before.timestamp:
            self._sent[job_id] = _Sent(sequence, event.timestamp, event.clock, _content(event))
        else:
            self._sent[job_id] = _Sent(sequence, before.timestamp, before.clock, before.content)

    # -- batch reads (the refresher's) ---------------------------------------------------

    def _load_jobs(self, job_ids: list[str]) -> dict[str, JobCheck]:
        return JobReads(self.store).job_checks(job_ids)

    def _load_mappings(self, workers: list[str]) -> dict[str, str]:
        return JobReads(self.store).jobs_of_workers(workers)


def _flag(value: str | None) -> bool:
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise _invalid_param("query", "wait", "wait is a boolean: true or false")


def _invalid_param(where: str, name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": (where, name), "msg": message, "type": "value_error"}])


def _content(event: ProgressEvent) -> tuple[Any, ...]:
    return (event.percent, event.message, event.stage, event.current, event.total)


def _state(request: Request) -> Any:
    return request.app.state.morag


router = APIRouter(prefix="/api/v1/remote-jobs", tags=["remote workers"])


_PROGRESS_DOC: dict[str, Any] = {
    # The route reads its own parameters (see report_progress): documented here.
    "parameters": [
        {"name": "job_id", "in": "path", "required": True, "description": "Job id.",
         "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH,
                    "pattern": ID_PATTERN}},
        {"name": "wait", "in": "query", "required": False,
         "description": "Write now and answer 200 with the job.",
         "schema": {"type": "boolean", "default": False}},
    ],
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ProgressUpdate"}}}},
    "security": [{"HTTPBearer": []}],
}
_TRUE = frozenset({"1", "true", "yes", "on", "t", "y"})
_FALSE = frozenset({"0", "false", "no", "off", "f", "n"})
_JOB_ID = re.compile(ID_PATTERN)


@router.put(
    "/{job_id}/progress",
    status_code=202,
    response_model=UpdateAccepted,
    responses={
        200: {"model": UpdateAccepted,
              "description": "Written (`?wait=true`), or a no-op: `duplicate` (a retry of "
                             "the last report) or `stale` (older than the last applied one)."},
        202: {"model": UpdateAccepted,
              "description": "Accepted and queued; written within the coalescing interval."},
        **errors(401, 403, 404, 409, 413, 422, 503),
    },
    openapi_extra=_PROGRESS_DOC,
    summary="Report a remote worker's progress",
)
async def report_progress(request: Request) -> Any:
    """Report progress on a job; it goes through the same ``ProgressHandler`` as every source.

    Without ``wait`` the report is queued for the handler's coalesced write and
    answered **202** (`outcome: queued`); the checks use a job snapshot at most 1 s old,
    so a job ended by another process within that second answers 202 and the report is
    then ignored. With ``?wait=true`` it is written before answering **200** with the job.

    Retrying is safe: a report whose ``sequence`` is not above the last one (or, without
    sequences, whose timestamp and content equal the last report's) answers **200**
    ``duplicate``/``stale`` and changes nothing.

    Errors, checked in this order: **413** a body over the size limit (before anything
    is read); **401** no or invalid key; **403** a user key; **422** invalid job id or
    body (NaN, infinity, negative or over-100 percentage, wrong types, unknown fields);
    **404** no such job, or one neither assigned (`worker_id`) nor mapped to the worker
    key's worker (the two answer alike); **409** the job has ended.
    """
    # The hot path: parameters, key and body are read here rather than through FastAPI's
    # dependency machinery, which costs more than the rest of the request together.
    # The key comes first: nothing about the request or the job is looked at before it.
    principal = await principal_of(request, bearer_token(request))
    principal.require_reporter()
    job_id = _job_id(request)
    wait = _flag(request.query_params.get("wait"))
    update = _body(ProgressUpdate, await request.body())
    state = _state(request)
    cache: JobCache = state.jobs
    job = await cache.get(job_id)
    if job is not None and not await cache.may_report(principal, job):
        job = await cache.owned_now(principal, job_id)
    if job is None:
        raise _not_found(principal, job_id)
    if job.status.is_terminal:
        raise _ended(job)
    event = ProgressEvent(
        percent=update.percentage, message=update.message, stage=update.stage,
        current=update.current, total=update.total, timestamp=update.timestamp,
        sequence=update.sequence, source="remote", job_id=job_id,
        worker_id=principal.subject if principal.scope == "worker" else None,
    )
    handler: ProgressHandler = state.handler
    # A fast clock is clamped before the retry check, so neither it nor its memory of
    # what was sent ever holds a time in the future.
    event = arrived(event, handler.stats)
    repeat = cache.repeat_of(job, event)
    if repeat is not None:
        state.metrics.count_update(repeat)
        return JSONResponse({"job_id": job_id, "outcome": repeat, "job": None})
    if wait:
        result = await run_in_threadpool(handler.apply, event, job_id, immediate=True)
    else:
        result = handler.apply(event, job_id)
    cache.sent(job_id, event)
    if result.reason == "terminal":
        raise _ended(job)
    if result.reason == "no_job":
        raise _not_found(principal, job_id)
    if result.reason == "queued":
        return Response(b'{"job_id":%s,"outcome":"queued","job":null}' % json.dumps(job_id)
                        .encode(), 202, media_type="application/json")
    body = {"job_id": job_id, "outcome": result.reason,
            "job": job_json(result.job) if result.job is not None else None}
    return JSONResponse(body)


_COMPLETE_DOC: dict[str, Any] = {
    # The route reads its own parameters (see complete): documented here.
    "parameters": [_PROGRESS_DOC["parameters"][0]],
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Completion"}}}},
    "security": [{"HTTPBearer": []}],
}


@router.post(
    "/{job_id}/complete",
    response_model=JobOut,
    responses={
        200: {"description": "The job as ended (also for a retry of the same completion)."},
        **errors(401, 403, 404, 409, 413, 422, 503),
    },
    openapi_extra=_COMPLETE_DOC,
    summary="End a job: success or failure",
)
async def complete(request: Request) -> Any:
    """End a job: FINISHED at 100% (`success: true`) or FAILED keeping its percentage.

    Written before answering. ``result`` is stored in the job's metadata under
    ``result``. A retry of a completion that already landed (same outcome) answers 200
    with the job; ending a job that ended otherwise is **409**. Errors in the same order
    as for progress: the key (**401**, **403**) before the body is even read.
    """
    principal = await principal_of(request, bearer_token(request))
    principal.require_reporter()
    job_id = _job_id(request)
    body = _body(Completion, await request.body())
    return await run_in_threadpool(_complete, _state(request), principal, job_id, body)


def _complete(state: Any, principal: Principal, job_id: str, body: Completion) -> Any:
    store: JobStore = state.store
    job = store.get_job(job_id, **principal.owner())
    if job is None:
        raise _not_found(principal, job_id)
    if job.status.is_terminal:
        if _same_end(job, body.success):
            return JSONResponse(job_json(job))
        raise _ended(job)
    # The completing worker is recorded on the job, in the ending's own write: its mapping
    # is forgotten when the job ends, and a retry of this completion must still find it.
    worker = principal.subject if principal.scope == "worker" else None
    handler: ProgressHandler = state.handler
    message = body.message or (None if body.success else "failed on the remote worker")
    written = handler.handle_job_completion(
        job_id, body.success, message, result=body.result,
        worker_id=worker if worker is not None and job.worker_id != worker else None)
    ended = store.require_job(job_id)
    if not written and not ended.status.is_terminal:
        raise HTTPException(503, "the job database did not take the completion in time; it "
                                 "is queued and retried, send the same request again later")
    state.jobs.remember("completed", ended)
    if ended.status.is_terminal and not _same_end(ended, body.success):
        raise _ended(ended)
    return JSONResponse(job_json(ended))


def _job_id(request: Request) -> str:
    job_id: str = request.path_params["job_id"]
    if len(job_id) > MAX_ID_LENGTH or not _JOB_ID.match(job_id):
        raise _invalid_param("path", "job_id", f"a job id is 1 to {MAX_ID_LENGTH} printable "
                                               "characters")
    return job_id


def _body(model: type[_Model], raw: bytes) -> _Model:
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in error.errors(include_url=False)]
        ) from None


def _not_found(principal: Principal, job_id: str) -> HTTPException:
    """Unknown, and not this key's, answer alike: a key learns nothing of others' jobs."""
    if principal.scope == "worker":
        return HTTPException(404, f"no job {job_id!r} assigned or mapped to worker "
                                  f"{principal.subject!r}; report with that job's worker key")
    return HTTPException(404, f"no job {job_id!r}: report on a job that exists")


def _ended(job: Job | JobCheck) -> HTTPException:
    return HTTPException(409, f"job {job.id!r} has already ended ({job.status.value}); "
                              "it takes no more progress or completion")


def _same_end(job: Job, success: bool) -> bool:
    return job.status.value == ("FINISHED" if success else "FAILED")
