"""The rules of job state, as pure functions of (job snapshot, what happened).

Each function returns what ``JobStore.update_job`` needs, ``(changes, history)``, or
None when the job must not change. They are pure because the store may call them
again on a fresher snapshot when another writer got there first; that is what keeps
many processes writing one job correct.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from morag_jobs.events import ProgressEvent, utc_now
from morag_jobs.store import Job, JobChanges, JobStatus
from morag_jobs.store.reaping import REDELIVERY_DEADLINE

__all__ = [
    "Applied",
    "Outcome",
    "Staleness",
    "Verdict",
    "cancellation",
    "completion",
    "heartbeat",
    "judge",
    "judged_chain",
    "judged_progress",
    "progress",
    "redelivery_missed",
    "retry",
    "staleness",
    "start",
    "worker_lost",
]

Outcome = tuple[JobChanges, Mapping[str, Any] | None]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules make of one event on one job, before anything is written."""

    accepted: bool
    reason: str
    percentage: float | None = None
    stage: str | None = None
    stage_percent: float | None = None


Applied = tuple[int | None, datetime | None, str | None]
"""An event already applied (or queued): its sequence, timestamp and clock."""

Staleness = Literal["stale", "repeat", "same_time"] | None


def staleness(event: ProgressEvent, *applied: Applied) -> Staleness:
    """Where ``event`` stands against the newest of the ``applied`` ones: the one rule
    of staleness, for the handler (the job's last event) and for the API's retry check
    (the job's and the report this process queued but has not written yet).

    By sequence when the event and any of them carry one: ``stale`` below the highest,
    ``repeat`` equal to it (a retry). Otherwise by timestamp, compared only with times
    from the event's own clock (see ``ProgressEvent.clock``: a source whose clock is off
    cannot make another's events stale): ``stale`` when older, ``same_time`` when equal
    (a retry only if its content is the same). None: newer, or nothing to compare with.
    """
    sequence = event.sequence
    if sequence is not None:
        last: int | None = None
        for applied_sequence, _, _ in applied:
            if applied_sequence is not None and (last is None or applied_sequence > last):
                last = applied_sequence
        if last is not None:
            if sequence < last:
                return "stale"
            return "repeat" if sequence == last else None
    clock = event.clock
    last_at: datetime | None = None
    for _, at, on in applied:
        if at is not None and on == clock and (last_at is None or at > last_at):
            last_at = at
    if last_at is None or event.timestamp > last_at:
        return None
    return "stale" if event.timestamp < last_at else "same_time"


_NOT_APPLIED = frozenset({"stale", "repeat"})


def judge(job: Job, event: ProgressEvent) -> Verdict:
    """Map the event onto the job's overall scale and decide whether it may apply.

    Reasons for refusal: ``terminal`` (the job has ended), ``stale`` (older than the
    last applied event, or its sequence again: see ``staleness``) and ``stage_behind``
    (a stage the job has already left; stages only move forward).
    """
    if job.status.is_terminal:
        return Verdict(False, "terminal")
    if event.attempt is not None and event.attempt < job.attempt:
        return Verdict(False, "superseded")
    # A last time still in the future (written before clocks were clamped) is read as
    # now, so it cannot freeze the job; the same sequence again is a retry, not applied.
    last_at = job.last_event_at
    if last_at is not None:
        last_at = min(last_at, utc_now())
    if staleness(event, (job.last_sequence, last_at, job.last_event_clock)) in _NOT_APPLIED:
        return Verdict(False, "stale")
    plan = job.stages
    if plan is None:
        return Verdict(True, "applied", event.percent, event.stage or job.stage, event.percent)
    stage = plan.resolve(event.stage, job.stage)
    current_index = plan.index(job.stage)
    if current_index is not None and plan.index(stage) < current_index:  # type: ignore[operator]
        return Verdict(False, "stage_behind")
    if event.percent is None:
        return Verdict(True, "applied", None, stage, None)
    return Verdict(True, "applied", plan.to_overall(stage, event.percent), stage, event.percent)


def progress(job: Job, event: ProgressEvent, verdict: Verdict | None = None) -> Outcome | None:
    """A progress event: the overall percentage only rises; PENDING becomes PROCESSING.

    A late event on an ended job is not applied, but counted on the job
    (``ignored_count``) so that the record shows it happened.
    """
    verdict = verdict or judge(job, event)
    if not verdict.accepted:
        if verdict.reason in ("terminal", "superseded"):
            return {"ignored_count": job.ignored_count + 1}, None
        return None
    now = utc_now()
    percentage = job.percentage
    if verdict.percentage is not None:
        percentage = max(percentage, min(verdict.percentage, 100.0))
    changes: JobChanges = {
        "percentage": percentage,
        "last_event_at": min(event.timestamp, now),
        "last_event_clock": event.clock,
        "last_progress_at": now,
        "heartbeat_at": now,
    }
    if verdict.stage != job.stage:
        changes["stage"] = verdict.stage
        changes["stage_percent"] = verdict.stage_percent
        # A stage's counts are its own: "items 150/150" of the download must not show
        # during the alignment (the event's own counts, if any, are set below).
        changes["current"] = changes["total"] = None
    elif verdict.stage_percent is not None:
        changes["stage_percent"] = max(job.stage_percent or 0.0, verdict.stage_percent)
    if event.sequence is not None:
        changes["last_sequence"] = event.sequence
    if event.current is not None:
        changes["current"] = event.current
        changes["total"] = event.total
    if event.message:
        changes["summary"] = event.message
    if job.status is JobStatus.PENDING and percentage > 0:
        changes["status"] = JobStatus.PROCESSING
        changes["started_at"] = job.started_at or now
    if event.source == "remote" and job.claim in (None, "remote"):
        # A remote worker answers for the job: each report renews its lease.
        changes["claim"] = "remote"
        if job.lease_seconds is not None:
            changes["lease_until"] = now + timedelta(seconds=job.lease_seconds)
    history = {"source": event.source, "kind": "progress", "at": now,
               "reported_at": min(event.timestamp, now), "format": event.format}
    if event.message:
        history["message"] = event.message
    return changes, history


def judged_progress(event: ProgressEvent) -> tuple[Callable[[Job], Outcome | None], list[Verdict]]:
    """A mutation for ``JobStore.update_job`` and the list where it records its verdict."""
    verdicts: list[Verdict] = []

    def mutate(job: Job) -> Outcome | None:
        verdict = judge(job, event)
        verdicts[:] = [verdict]
        return progress(job, event, verdict)

    return mutate, verdicts


def judged_chain(
    events: list[ProgressEvent],
) -> tuple[Callable[[Job], Outcome | None], list[Verdict]]:
    """One mutation applying ``events`` in order, each judged on the job as the previous
    ones left it; the verdicts (one per event) are recorded in the returned list."""
    verdicts: list[Verdict] = []

    def mutate(job: Job) -> Outcome | None:
        verdicts.clear()
        changes: JobChanges = {}
        history: Mapping[str, Any] | None = None
        current = job
        for event in events:
            verdict = judge(current, event)
            verdicts.append(verdict)
            outcome = progress(current, event, verdict)
            if outcome is None:
                continue
            changes.update(outcome[0])
            history = outcome[1] or history
            current = replace(current, **outcome[0])
        return (changes, history) if changes else None

    return mutate, verdicts


def completion(
    job: Job, success: bool, message: str | None, source: str = "lifecycle", *,
    attempt: int | None = None,
) -> Outcome | None:
    """FINISHED at 100%, or FAILED keeping the percentage reached and recording the error.

    A completion from an ``attempt`` older than the job's current one changes nothing
    (a worker that came back after its task was delivered to another)."""
    if job.status.is_terminal or (attempt is not None and attempt < job.attempt):
        return None
    now = utc_now()
    status = JobStatus.FINISHED if success else JobStatus.FAILED
    changes: JobChanges = {"status": status, "finished_at": now, "heartbeat_at": now}
    if success:
        changes["percentage"] = 100.0
        if job.stages is not None:
            changes["stage"] = job.stages.names[-1]
            changes["stage_percent"] = 100.0
        if message:  # else the task's last message stays; the ending is in the history
            changes["summary"] = message
    else:
        changes["error"] = message or "failed"
        if message:
            changes["summary"] = message
    if job.started_at is None:
        changes["started_at"] = now
    kind = "completion" if success else "failure"
    return changes, {"source": source, "kind": kind, "message": message or status.value}


def cancellation(job: Job, reason: str | None, source: str = "lifecycle") -> Outcome | None:
    """CANCELLED (from revocation); the percentage reached is kept."""
    if job.status.is_terminal:
        return None
    now = utc_now()
    message = reason or "cancelled"
    changes: JobChanges = {"status": JobStatus.CANCELLED, "finished_at": now,
                           "summary": message, "heartbeat_at": now}
    return changes, {"source": source, "kind": "cancellation", "message": message}


def retry(
    job: Job, message: str, *, reset: bool = False, source: str = "lifecycle",
    status: JobStatus = JobStatus.PROCESSING,
) -> Outcome | None:
    """A retry: noted in the summary and history; only here may the percentage go down."""
    if job.status.is_terminal:
        return None
    now: datetime = utc_now()
    changes: JobChanges = {"summary": message, "heartbeat_at": now, "status": status}
    if reset:
        changes.update(percentage=0.0, stage=None, stage_percent=None, current=None,
                       total=None, last_event_at=None, last_sequence=None)
    return changes, {"source": source, "kind": "retry", "message": message}


_REDELIVERY_TIMEOUT = "redelivery_timeout"  # beside the deadline: the seconds it allowed


def start(job: Job, worker: str | None = None, *, redelivery_ok: bool = False) -> Outcome | None:
    """A worker picked the task up: PROCESSING, ``started_at`` and a fresh heartbeat.

    ``redelivery_ok`` says the task queue will deliver the task again should this worker
    be lost (for Celery: see ``morag_jobs.celery.plugin``); it is kept on the job as
    ``redelivery_expected`` because the reaper, which only sees a silent heartbeat, must
    know whether to wait for that delivery or fail the job. A job the reaper left PENDING
    awaiting it resumes here, its deadline dropped.
    """
    if job.status.is_terminal:
        return None
    now = utc_now()
    awaited = REDELIVERY_DEADLINE in job.metadata
    metadata = _not_awaiting(job.metadata)
    metadata["redelivery_expected"] = redelivery_ok
    if worker is not None:
        metadata["worker"] = worker
    changes: JobChanges = {"status": JobStatus.PROCESSING, "heartbeat_at": now,
                           "started_at": job.started_at or now, "metadata": metadata,
                           "claim": "celery", "attempt": job.attempt + 1}
    verb = "started"
    if awaited:
        verb = "redelivered"
    elif job.status is JobStatus.PROCESSING:
        verb = "restarted"
    message = f"{verb} on {worker}" if worker else verb
    if awaited:
        changes["summary"] = message  # no longer "waiting for redelivery"
    return changes, {"source": "lifecycle", "kind": "start", "message": message}


def heartbeat(job: Job) -> Outcome | None:
    """The worker running the job is alive; no history row."""
    if job.status is not JobStatus.PROCESSING:
        return None
    return {"heartbeat_at": utc_now()}, None


def worker_lost(
    job: Job, timeout: float, *, redelivery_timeout: float, now: datetime | None = None
) -> Outcome | None:
    """The reaper found no heartbeat: FAILED, unless the task will be delivered again.

    Then (``redelivery_expected``) the job goes back to PENDING with a deadline
    ``redelivery_timeout`` seconds away, after which ``redelivery_missed`` fails it.
    """
    if job.status is not JobStatus.PROCESSING:
        return None
    now = now or utc_now()
    message = f"worker lost: no heartbeat for {timeout:g}s"
    if not job.metadata.get("redelivery_expected"):
        return _lost(job, message, now)
    deadline = now + timedelta(seconds=redelivery_timeout)
    metadata = {**job.metadata, REDELIVERY_DEADLINE: deadline.isoformat(),
                _REDELIVERY_TIMEOUT: redelivery_timeout}
    summary = f"{message}; waiting for redelivery (up to {redelivery_timeout:g}s)"
    return ({"status": JobStatus.PENDING, "summary": summary, "metadata": metadata},
            {"source": "reaper", "kind": "requeue", "message": summary})


def redelivery_missed(job: Job, now: datetime | None = None) -> Outcome | None:
    """A job awaiting redelivery past its deadline: FAILED, the task never came back."""
    raw = job.metadata.get(REDELIVERY_DEADLINE)
    if job.status is not JobStatus.PENDING or raw is None:
        return None
    now = now or utc_now()
    try:
        deadline = datetime.fromisoformat(str(raw))
    except ValueError:  # unreadable: failing beats waiting forever
        deadline = now
    if now < (deadline if deadline.tzinfo else deadline.replace(tzinfo=now.tzinfo)):
        return None
    waited = job.metadata.get(_REDELIVERY_TIMEOUT)
    within = f" within {waited:g}s" if isinstance(waited, int | float) else ""
    return _lost(job, f"worker lost; not redelivered{within}", now)


def lease_expired(job: Job, now: datetime | None = None) -> Outcome | None:
    """A remote job whose worker has not reported within its lease: FAILED."""
    now = now or utc_now()
    if (job.status.is_terminal or job.claim != "remote" or job.lease_until is None
            or job.lease_until >= now):
        return None
    who = f" from {job.worker_id}" if job.worker_id else ""
    return _lost(job, f"lease expired: no report{who} for {job.lease_seconds or 0:g}s", now)


def never_started(job: Job, timeout: float, now: datetime | None = None) -> Outcome | None:
    """A task queued ``timeout`` seconds ago that no worker ever started: FAILED (the
    message was lost: a purged queue, a broker that lost it, a worker that never came)."""
    now = now or utc_now()
    if (job.status is not JobStatus.PENDING or job.claim != "queued" or job.created_at is None
            or job.created_at + timedelta(seconds=timeout) >= now):
        return None
    return _lost(job, f"never started: queued for more than {timeout:g}s (task lost?)", now)


def _not_awaiting(metadata: Mapping[str, Any]) -> dict[str, Any]:
    awaiting = (REDELIVERY_DEADLINE, _REDELIVERY_TIMEOUT)
    return {key: value for key, value in metadata.items() if key not in awaiting}


def _lost(job: Job, message: str, now: datetime) -> Outcome:
    changes: JobChanges = {"status": JobStatus.FAILED, "error": message, "summary": message,
                           "finished_at": now}
    if REDELIVERY_DEADLINE in job.metadata:
        changes["metadata"] = _not_awaiting(job.metadata)
    return changes, {"source": "reaper", "kind": "failure", "message": message}
