"""How a child's write moves its parent: the change (pure) and the SQL that applies it.

Used by ``JobStore`` in the transaction of every write of a job that has a parent; see
:mod:`morag_jobs.store.family` for parents and children as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, Update, case, cast, literal, update

from morag_jobs.store import queries as q
from morag_jobs.store.records import Job, JobStatus

__all__ = ["CANVAS_FATAL", "TERMINAL", "ParentChange", "parent_change", "parent_update"]

TERMINAL = [status.value for status in JobStatus if status.is_terminal]
CANVAS_FATAL = "canvas_fatal"
"""Metadata flag of a child whose failure ends its canvas (a chain member, a chord header)."""


@dataclass(frozen=True, slots=True)
class ParentChange:
    """What one child write changes in its parent's running sums (applied in SQL, in the
    child's transaction, so concurrent children never lose each other's changes)."""

    progress: float
    """weight x the child's change of percentage."""
    started: bool
    """The child left PENDING: the parent is PROCESSING from now on."""
    done: int
    failed: int
    fatal: str | None
    """The canvas cannot go on (a chain member, a chord header failed): the parent's error."""


def parent_change(old: Job, new: Job) -> ParentChange | None:
    """How a child's write moves its parent, or None when it does not."""
    if new.parent_id is None:
        return None
    delta = new.percentage - old.percentage
    ended = new.status.is_terminal and not old.status.is_terminal
    started = old.status is JobStatus.PENDING and new.status is not JobStatus.PENDING
    if not (delta or ended or started):
        return None
    failed = ended and new.status is not JobStatus.FINISHED
    fatal = None
    if failed and new.metadata.get(CANVAS_FATAL):
        fatal = f"{new.name or new.id} {new.status.value}: {new.error or new.summary}"[:1000]
    return ParentChange(new.weight * delta, started, int(ended), int(failed), fatal)


def parent_update(parent_id: str, change: ParentChange, now: datetime) -> Update:
    """Add one child's ``change`` to its parent, and derive the parent's state from the sums:

    percentage = progress_sum / children_weight (never lower than before, at most 100);
    PROCESSING once a child started or moved; FAILED at once when the canvas cannot go on
    (``change.fatal``); when every child ended, FINISHED if none failed, else FAILED
    ("k of n children failed"). An ended parent keeps its state: only its sums move.
    """
    jobs = q.JOBS.c
    done = jobs.children_done + change.done
    failed = jobs.children_failed + change.failed
    total = jobs.progress_sum + change.progress
    mean = case((jobs.children_weight > 0, total / jobs.children_weight), else_=0.0)
    capped = case((mean > 100.0, 100.0), else_=mean)
    ended = jobs.status.in_(TERMINAL)
    all_done = done >= jobs.children
    failed_now: Any = literal(change.fatal is not None) | (all_done & (failed > 0))
    count = (cast(failed, String) + " of " + cast(jobs.children, String)
             + " children failed")
    error: Any = literal(change.fatal) if change.fatal is not None else count
    status = case(
        (ended, jobs.status),
        (failed_now, JobStatus.FAILED.value),
        (all_done, JobStatus.FINISHED.value),
        (literal(change.started or change.progress > 0), JobStatus.PROCESSING.value),
        else_=jobs.status,
    )
    finishing = ~ended & (failed_now | all_done)
    return (
        update(q.JOBS).where(jobs.id == parent_id)
        .values(
            progress_sum=total, children_done=done, children_failed=failed,
            status=status,
            percentage=case(
                (ended, jobs.percentage),
                (~failed_now & all_done, 100.0),
                (capped > jobs.percentage, capped),
                else_=jobs.percentage),
            error=case((ended, jobs.error), (failed_now, error), else_=jobs.error),
            summary=case(
                (ended, jobs.summary), (failed_now, error),
                (all_done, cast(jobs.children, String) + " children finished"),
                else_=jobs.summary),
            finished_at=case((finishing, now), else_=jobs.finished_at),
            started_at=case((jobs.started_at.is_(None), now), else_=jobs.started_at),
            updated_at=now, last_progress_at=now, version=jobs.version + 1,
        )
    )
