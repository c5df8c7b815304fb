"""``ProgressHandler``: the one place where progress events become job state.

Every source (log lines, callbacks in tasks, remote workers) hands it a
``ProgressEvent``; it resolves the job, applies the rules of :mod:`morag_jobs.rules`
and writes through its private coalescing writer (:mod:`morag_jobs._writer`). It never raises
into the code that reported progress: a refused or failed update returns False (or an
``ApplyResult`` saying why) and is logged.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from morag_jobs import _config, rules
from morag_jobs._writer import CoalescingWriter, WritePolicy
from morag_jobs.errors import RETRYABLE, JobExists, JobNotFound, StoreUnavailable, brief
from morag_jobs.events import ProgressEvent, not_ahead, utc_now
from morag_jobs.logs import get_logger
from morag_jobs.mappings import JobMappings
from morag_jobs.outcomes import ApplyResult, HandlerStats
from morag_jobs.stages import get_stage_plan
from morag_jobs.store import Family, Job, JobChanges, JobStatus, JobStore, Mutation

__all__ = ["ApplyResult", "HandlerStats", "Listener", "ProgressHandler", "arrived"]


ENDED_MEMORY = 600.0
"""Seconds an ended job is remembered, so late events on it are refused without a query."""
ENDED_MEMORY_MAX = 100_000
"""At most this many ended jobs are remembered, however many ended within ``ENDED_MEMORY``."""
log = get_logger(__name__)

Listener = Callable[[str, Job], None]
"""Called with ("created" | "updated" | "completed" | "failed" | "cancelled", the job)."""

_LISTENER_ATTEMPTS = 3
_ENDINGS = {
    "completion": JobStatus.FINISHED,
    "failure": JobStatus.FAILED,
    "cancellation": JobStatus.CANCELLED,
}
_EVENT_TYPES = {
    JobStatus.FINISHED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


def arrived(event: ProgressEvent, stats: HandlerStats) -> ProgressEvent:
    """``event`` as it is taken on arrival: a timestamp ahead of our clock (a remote
    worker's, a log's local time read as UTC) is clamped to now and counted, so it can
    never make every later report look stale. The handler does it to every event; the
    API does it before its retry check too (a second call changes nothing)."""
    clamped = not_ahead(event, utc_now())
    if clamped is None:
        return event
    stats.future_timestamps += 1
    return clamped


class ProgressHandler:
    """Turns progress events into job state; see ARCHITECTURE.md, "Rules of job state".

    ``interval`` is the write-coalescing window per job (0 writes every event as soon as
    the writer thread gets to it). Listeners are attached by whoever assembles the
    handler (``install()``, ``create_app()``, the CLI attach the webhook outbox with
    :func:`morag_jobs.webhooks.attach_outbox`); the seed's method names live in
    :mod:`morag_jobs.compat`.
    With ``auto_create_jobs`` an event for a job id that was named explicitly (argument
    or event field) creates the job when it does not exist, as the original MoRAG
    tracker's callers expect; ids that were only guessed (an unmapped worker or task)
    never create anything.
    """

    def __init__(
        self,
        store: JobStore | None = None,
        *,
        database_url: str | None = None,
        interval: float = _config.WRITE_INTERVAL,
        auto_create_jobs: bool = True,
        sync_timeout: float = _config.SYNC_TIMEOUT,
        mapping_ttl: float = _config.MAPPING_TTL,
        policy: WritePolicy | None = None,
    ) -> None:
        if store is not None and database_url is not None:
            raise ValueError("pass either store or database_url, not both")
        self._owns_store = store is None
        self.store = store if store is not None else JobStore(database_url)
        self.auto_create_jobs = auto_create_jobs
        self.stats = HandlerStats()
        self.mappings = JobMappings(self.store, mapping_ttl)
        """Worker/task -> job bindings: how an event that names no job finds one."""
        self._terminal: dict[str, tuple[float, JobStatus]] = {}
        """Ended jobs -> (when they may be forgotten (monotonic), how they ended), oldest
        first: late events on them are refused without a query for ``ENDED_MEMORY`` s, and
        a task still running one learns it (``stop_reason``)."""
        self._superseded: dict[str, int] = {}
        """Jobs a write refused an older attempt's event for -> the job's attempt then."""
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._writer = CoalescingWriter(
            self.store, policy or WritePolicy(interval, sync_timeout),
            on_written=self._written, on_error=self._failed, create_job=self._create_missing,
        )

    # -- the general entry point ---------------------------------------------------------

    def apply(
        self, event: ProgressEvent, job_id: str | None = None, *, immediate: bool = False
    ) -> ApplyResult:
        """Apply one event to its job: queued for the coalesced write, or written now.

        The job is ``job_id``, else the event's ``job_id``, else the job mapped to its
        ``worker_id``, else the job mapped to its ``task_id``.
        """
        explicit = job_id or event.job_id
        target = explicit or self.mappings.resolve(event)
        if target is None:
            self.stats.count(event.source, "no_job")
            log.warning("no job for progress event", worker_id=event.worker_id,
                        task_id=event.task_id, format=event.format)
            return ApplyResult(False, "no_job")
        if event.percent is not None and event.percent > 100.0:
            log.warning("percentage above 100 clamped to 100", job_id=target,
                        percent=event.percent)
            event = replace(event, percent=100.0)
        event = arrived(event, self.stats)
        if target in self._terminal:
            self.stats.count(event.source, "terminal")
            return ApplyResult(False, "terminal", target)
        create = self.auto_create_jobs and explicit is not None
        if immediate:
            return self._apply_now(target, event, create)
        self._writer.submit(target, event, create=create)
        self.stats.count(event.source, "queued")
        return ApplyResult(True, "queued", target)

    def flush(self, timeout: float | None = None) -> int:
        """Write what is coalesced now, in the caller; the number of jobs written."""
        return self._writer.flush(timeout)

    def close(self) -> None:
        """Flush and stop the writer thread (also done at a clean interpreter exit).

        A store the handler built itself (from ``database_url``) is closed too.
        """
        self._writer.close()
        if self._owns_store:
            self.store.close()

    # -- listeners -----------------------------------------------------------------------

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The listeners attached, in the order they are called."""
        return tuple(self._listeners)

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(event_type, job)`` after every write; failures are isolated."""
        with self._lock:
            self._listeners = [*self._listeners, callback]

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling ``callback``."""
        with self._lock:
            self._listeners = [c for c in self._listeners if c != callback]

    def create_job(
        self, *, children: Sequence[Mapping[str, Any]] | None = None, **fields: Any
    ) -> Job:
        """Create a job (``JobStore.create_job``'s fields) and tell the listeners ("created").

        Without ``stages`` the job takes the plan registered for its ``job_type``
        (``register_stage_plan``), if any. With ``children`` (each ``create_job``'s fields
        and an optional ``weight``) it is a parent job, made with its children in one
        transaction, its percentage the weighted mean of theirs (``morag_jobs.store.family``).

        Jobs are created here rather than on the store, so that every change of a job,
        its birth included, reaches every listener (the API cache, the stream, the mirror).
        """
        if fields.get("stages") is None:
            fields["stages"] = get_stage_plan(fields.get("job_type"))
        if children is None:
            job = self.store.create_job(**fields)
        else:
            planned = [child if child.get("stages") is not None else
                       {**child, "stages": get_stage_plan(child.get("job_type"))}
                       for child in children]
            job, _ = Family(self.store).create(fields, planned)
        for listener in self._listeners:
            self._call_listener(listener, "created", job)
        return job

    def handle_job_completion(
        self, job_id: str, success: bool, final_message: str | None = None, *,
        result: Any = None, worker_id: str | None = None, attempt: int | None = None,
    ) -> bool:
        """End the job: FINISHED at 100%, or FAILED keeping its percentage. Written now.

        ``result`` is kept in the job's metadata under ``result`` and ``worker_id`` names
        who ended it, in the same write as the ending (a remote worker's completion).
        """
        def mutate(job: Job) -> rules.Outcome | None:
            outcome = rules.completion(job, success, final_message, attempt=attempt)
            if outcome is None or (result is None and worker_id is None):
                return outcome
            changes: JobChanges = {**outcome[0]}
            if result is not None:
                changes["metadata"] = {**job.metadata, "result": result}
            if worker_id is not None:
                changes["worker_id"] = worker_id
            return changes, outcome[1]

        return self._finish(job_id, mutate, "completion" if success else "failure")

    def handle_job_lost(self, job_id: str, mutate: Mutation) -> Job | None:
        """The reaper's verdict on a job whose worker went silent (``rules.worker_lost``,
        ``rules.redelivery_missed``), written now on the one write path, so listeners
        (the webhook outbox included) see a reaped job like any other ending. The job as
        written, or None when it moved on since it was read (and was left alone)."""
        try:
            return self._writer.write_now(job_id, mutate, "reaped")
        except JobNotFound:
            return None

    def handle_job_cancellation(self, job_id: str, reason: str | None = None) -> bool:
        """The job was cancelled (revoked); its percentage is kept. A parent's children
        still running are cancelled too (their tasks stop at their next report)."""
        if not self._finish(job_id, lambda job: rules.cancellation(job, reason),
                            "cancellation"):
            return False
        because = f"parent cancelled: {reason}" if reason else "parent cancelled"
        try:
            children = Family(self.store).children(job_id, limit=None, running_only=True)
        except RETRYABLE as error:
            log.warning("children not cancelled: database unreachable", job_id=job_id,
                        error=brief(error))
            return True
        for child in children:
            self._finish(child.id, lambda job: rules.cancellation(job, because), "cancellation")
        return True

    def handle_job_retry(self, job_id: str, message: str, *, reset: bool = False) -> bool:
        """Note a retry; ``reset=True`` is the one way the percentage may go down."""
        return self._finish(job_id, lambda job: rules.retry(job, message, reset=reset), "retry")

    def handle_job_start(
        self, job_id: str, *, worker: str | None = None, redelivery_ok: bool = False
    ) -> Job | None:
        """A worker started the job: PROCESSING now, as attempt ``job.attempt`` (each start
        is a new, fenced attempt). None when the job does not exist or has ended."""
        return self._written_now(
            job_id, lambda job: rules.start(job, worker, redelivery_ok=redelivery_ok), "start",
            quiet_missing=True,
        )

    def stop_reason(self, job_id: str, attempt: int | None = None) -> str | None:
        """Why a task running ``attempt`` of the job must stop, if this process knows (no
        query): the job ended ("was cancelled", "ended FAILED elsewhere"), or a newer
        attempt took it over ("superseded by attempt N"). Learned from the job's writes
        and heartbeats, so a cancellation from elsewhere is seen within one of them."""
        ended = self._terminal.get(job_id)
        if ended is not None:
            status = ended[1]
            return ("was cancelled" if status is JobStatus.CANCELLED
                    else f"ended {status.value} elsewhere")
        newer = self._superseded.get(job_id)
        if attempt is not None and newer is not None and newer > attempt:
            return f"superseded by attempt {newer}"
        return None

    def heartbeat(self, job_ids: Iterable[str]) -> int:
        """Refresh the heartbeat of running jobs (for the reaper); the number refreshed.

        A job found ended (cancelled from the API, say) is remembered as ended."""
        return sum(self._beat(job_id) for job_id in job_ids)

    # -- internals -----------------------------------------------------------------------

    def _beat(self, job_id: str) -> bool:
        seen: list[JobStatus] = []

        def beat(job: Job) -> rules.Outcome | None:
            seen[:] = [job.status]
            return rules.heartbeat(job)

        try:
            written = self.store.update_job(job_id, beat) is not None
        except (*RETRYABLE, JobNotFound) as error:
            log.debug("heartbeat not written", job_id=job_id, error=brief(error))
            return False
        if seen and seen[0].is_terminal and job_id not in self._terminal:
            self._remember_ended(job_id, seen[0])
        return written

    def _apply_now(self, job_id: str, event: ProgressEvent, create: bool) -> ApplyResult:
        if create:
            self._ensure_job(job_id)
        mutate, verdicts = rules.judged_progress(event)

        def tally() -> list[tuple[str, str, int]]:
            return [(event.source, verdicts[-1].reason if verdicts else "applied", 1)]

        try:
            job = self._writer.write_now(job_id, mutate, "progress", tally)
        except JobNotFound:
            self.stats.count(event.source, "no_job")
            return ApplyResult(False, "no_job", job_id)
        except StoreUnavailable:
            # The database is away: the event waits with the job's other pending progress
            # (instead of a queued write of its own, so nothing overtakes it).
            self._writer.discard_final(job_id, mutate)
            self._writer.submit(job_id, event, create=create)
            self.stats.count(event.source, "queued")
            return ApplyResult(True, "queued", job_id)
        reason = tally()[0][1]
        return ApplyResult(reason == "applied", reason, job_id, job)

    def _finish(
        self, job_id: str, mutate: Mutation, kind: str, *, quiet_missing: bool = False
    ) -> bool:
        return self._written_now(job_id, mutate, kind, quiet_missing=quiet_missing) is not None

    def _written_now(
        self, job_id: str, mutate: Mutation, kind: str, *, quiet_missing: bool = False
    ) -> Job | None:
        try:
            job = self._writer.write_now(job_id, mutate, kind)
        except JobNotFound:
            if not quiet_missing:
                log.warning("no such job", job_id=job_id, kind=kind)
            return None
        except StoreUnavailable:
            # Queued by the writer and retried until it lands. Until then the job counts
            # as ended here, so progress reported after it is not written before it.
            if kind in _ENDINGS:
                self._terminal[job_id] = (math.inf, _ENDINGS[kind])  # until it lands
            return None
        if job is None:
            log.info("job already ended or moved on; nothing to do", job_id=job_id, kind=kind)
        return job

    def _written(
        self, job_id: str, job: Job | None, kind: str, tallies: list[tuple[str, str, int]]
    ) -> None:
        """The writer's report of one write: update caches and stats, call listeners."""
        stats = self.stats
        for source, outcome, n in tallies:
            stats.count(source, outcome, n)
        if job is None:
            return
        stats.writes += 1
        if any(outcome == "superseded" for _, outcome, _ in tallies):
            if len(self._superseded) >= ENDED_MEMORY_MAX:
                self._superseded.clear()  # a bound, not a cache policy: rare by nature
            self._superseded[job_id] = job.attempt
        if job.status.is_terminal:
            # Ended here, or elsewhere (a cancellation from the API): a task still running
            # it learns so at its next report, from this row, without a query of its own.
            first_seen = job_id not in self._terminal or kind != "progress"
            self._remember_ended(job_id, job.status)
            if first_seen:
                self.mappings.forget_job(job_id)
        if kind == "progress" and not any(outcome == "applied" for _, outcome, _ in tallies):
            return  # e.g. a late event counted on an ended job: nothing to tell listeners
        event_type = _EVENT_TYPES.get(job.status, "updated")
        for listener in self._listeners:
            self._call_listener(listener, event_type, job)

    def _failed(self, job_id: str, error: Exception) -> None:
        self.stats.write_errors += 1

    def _call_listener(self, listener: Listener, event_type: str, job: Job) -> None:
        for attempt in range(1, _LISTENER_ATTEMPTS + 1):
            try:
                listener(event_type, job)
                return
            except Exception:  # a listener never breaks the handler
                self.stats.listener_errors += 1
                log.exception("progress listener failed", listener=repr(listener),
                              attempt=attempt, job_id=job.id)

    def _remember_ended(self, job_id: str, status: JobStatus) -> None:
        """Keep an ended job for a while, so its late events cost no query; no longer,
        so a long-running worker's memory does not grow with every job it ever ran."""
        now = time.monotonic()
        ended = self._terminal
        ended.pop(job_id, None)  # re-inserted last: the dict stays oldest first
        ended[job_id] = (now + ENDED_MEMORY, status)
        while ended:
            first = next(iter(ended))
            if ended[first][0] > now and len(ended) <= ENDED_MEMORY_MAX:
                break
            del ended[first]

    def _ensure_job(self, job_id: str, **fields: str) -> None:
        try:
            if self.store.get_job(job_id) is None:
                self._create_missing(job_id, **fields)
        except RETRYABLE as error:
            # The writer creates it when the database is back (create=True on submit).
            log.warning("job not created now: database unreachable", job_id=job_id,
                        error=brief(error))

    def _create_missing(self, job_id: str, **fields: str) -> None:
        try:
            self.store.create_job(job_id=job_id, **fields)  # type: ignore[arg-type]
            log.info("job created on first progress", job_id=job_id)
        except JobExists:
            pass

