"""Retention: delete ended jobs (with their history and mappings) and settled webhook deliveries.

``prune(store, older_than)`` deletes the jobs that ended (FINISHED, FAILED, CANCELLED, or
the ``statuses`` given) before ``older_than``, by their ``finished_at``, a batch of ids
per transaction, so a prune of millions of rows never holds one huge transaction:

- a running job (PENDING, PROCESSING) is never deleted, nor is a job without ``finished_at``;
- a parent and its children go together, as one job: deleting a parent cascades to its
  children (``jobs.parent_id`` is ``ON DELETE CASCADE``), so a parent is deleted only when
  it qualifies and every one of its children has ended before the cutoff too (of any
  ended status). A child is never deleted on its own: a running parent's children stay,
  and so do an ended parent's, until the parent goes. (Canvases are one level deep:
  ``Family.create`` makes the only parents, and their children have none.)
- history rows (``job_events``) and mappings (``job_mappings``) go with their job (both
  ``ON DELETE CASCADE``); history is deleted first, explicitly, so that it is counted.
  ``keep_history=True`` deletes only the history of those jobs and keeps the job rows.

Webhook deliveries that were delivered or failed for good, whose last attempt (and
delivery) was before the cutoff, are deleted too, in batches as well; pending ones stay.
``dry_run=True`` counts what would be deleted and deletes nothing.

A batch is read, then deleted in a transaction of its own. What qualified when it was read
still does: ended jobs never run again (the rules refuse to reopen one), a parent never
gains a child after it was created, and a child that ends now ends after the cutoff.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, Table, and_, delete, func, or_, select

from morag_jobs.logs import get_logger
from morag_jobs.store import queries as q
from morag_jobs.store.jobs import JobStore
from morag_jobs.store.outbox import DELIVERIES
from morag_jobs.store.records import JobStatus

__all__ = ["DEFAULT_BATCH", "ENDED", "PruneResult", "ended_statuses", "prune"]

log = get_logger(__name__)

DEFAULT_BATCH: Final = 5000
"""Top-level jobs (a parent with its children) or deliveries deleted per transaction."""
ENDED: Final = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED)
"""The statuses pruned by default: every ended one."""
SETTLED_DELIVERIES: Final = ("delivered", "failed")


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune deleted (or, with ``dry_run``, would have deleted)."""

    jobs: int = 0
    """Job rows, children included; 0 with ``keep_history``."""
    history: int = 0
    """``job_events`` rows."""
    deliveries: int = 0
    """``webhook_deliveries`` rows."""
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(
    store: JobStore,
    older_than: datetime,
    statuses: Iterable[JobStatus | str] = ENDED,
    *,
    keep_history: bool = False,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
) -> PruneResult:
    """Delete what ended before ``older_than`` (see the module); the counts.

    ``statuses`` narrows the jobs pruned to some of the ended statuses (a running status
    is a ``ValueError``); a parent is judged by its own status and takes its children
    along. ``batch``: ids per transaction.
    """
    wanted = ended_statuses(statuses)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    jobs = history = 0
    for ids in _job_batches(store, older_than, wanted, batch):
        with store._reading() if dry_run else store._writing() as connection:
            counts = _prune_jobs(connection, ids, keep_history=keep_history, dry_run=dry_run)
        jobs += counts[0]
        history += counts[1]
        log.debug("prune batch", jobs=counts[0], history=counts[1], dry_run=dry_run)
    deliveries = _prune_deliveries(store, older_than, batch, dry_run=dry_run)
    result = PruneResult(jobs, history, deliveries, dry_run)
    log.info("prune done", cutoff=older_than.isoformat(), jobs=jobs, history=history,
             deliveries=deliveries, keep_history=keep_history, dry_run=dry_run)
    return result


def ended_statuses(statuses: Iterable[JobStatus | str]) -> list[str]:
    """The statuses' values, each once, or a ``ValueError`` naming the one that is not an
    ended status (or saying that none was given)."""
    parsed = [JobStatus.parse(status) for status in ([statuses] if isinstance(
        statuses, str) else statuses)]
    running = [status.value for status in parsed if not status.is_terminal]
    if running or not parsed:
        allowed = ", ".join(status.value for status in ENDED)
        named = f"{', '.join(running)} is not an ended status" if running else "no status given"
        raise ValueError(f"only ended jobs are pruned: {named}; use {allowed}")
    return sorted({status.value for status in parsed})


# -- jobs -------------------------------------------------------------------------------------


def _job_batches(
    store: JobStore, older_than: datetime, statuses: list[str], batch: int
) -> Iterator[list[str]]:
    """Ids of the qualifying top-level jobs, in id order, from ``batch`` rows read at a time
    (keyset: each batch is read after the one before was deleted, from where it ended, so
    nothing is read twice), less the parents that a child holds back."""
    jobs = q.JOBS.c
    ended_before = (jobs.parent_id.is_(None), jobs.status.in_(statuses),
                    jobs.finished_at < older_than)
    after: str | None = None
    while True:
        query = select(jobs.id).where(*ended_before).order_by(jobs.id).limit(batch)
        if after is not None:
            query = query.where(jobs.id > after)
        with store._reading() as connection:
            ids = list(connection.execute(query).scalars())
            held = _held_back(connection, ids, older_than) if ids else set()
        kept = [job_id for job_id in ids if job_id not in held]
        if kept:
            yield kept
        if len(ids) < batch:
            return
        after = ids[-1]


def _held_back(connection: Connection, ids: list[str], older_than: datetime) -> set[str]:
    """The parents among ``ids`` with a child that is running, or ended at the cutoff or
    later (or without a time). One query along the ``parent_id`` index; a correlated
    ``NOT EXISTS`` per job instead is a scan per job where SQLite's statistics say that
    ``parent_id`` (NULL in most rows) is not worth its index."""
    jobs = q.JOBS.c
    holds_back = or_(jobs.status.not_in([status.value for status in ENDED]),
                     jobs.finished_at.is_(None), jobs.finished_at >= older_than)
    query = select(jobs.parent_id).distinct().where(_among(jobs.parent_id, ids), holds_back)
    return set(connection.execute(query).scalars())


def _among(column: ColumnElement[Any], ids: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN ids``, bounded by ``ids[0]..ids[-1]`` (``ids`` come in the database's
    order): the range lets PostgreSQL read a slice of an index where 5,000 ``IN`` values
    alone may make it choose to scan the table."""
    return and_(column.between(ids[0], ids[-1]), column.in_(ids))


def _prune_jobs(
    connection: Connection, ids: list[str], *, keep_history: bool, dry_run: bool
) -> tuple[int, int]:
    """(jobs, history rows) of the parents ``ids`` and their children, deleted unless
    ``dry_run``; with ``keep_history`` only the history is deleted and jobs count 0.

    Parents and children are reached by separate statements, each along its own index
    (``id``, ``parent_id``, ``job_events.job_id``): an ``OR`` of the two scans whole tables."""
    jobs, events = q.JOBS.c, q.EVENTS
    children = select(jobs.id).where(_among(jobs.parent_id, ids))
    history_of = (_among(events.c.job_id, ids), events.c.job_id.in_(children))
    members = (_among(jobs.parent_id, ids), _among(jobs.id, ids))  # children, then parents
    if dry_run:
        history = sum(_count(connection, events, where) for where in history_of)
        if keep_history:
            return 0, history
        return sum(_count(connection, q.JOBS, where) for where in members), history
    history = sum(connection.execute(delete(events).where(where)).rowcount
                  for where in history_of)
    if keep_history:
        return 0, history
    return sum(connection.execute(delete(q.JOBS).where(where)).rowcount
               for where in members), history


def _count(connection: Connection, table: Table, where: ColumnElement[bool]) -> int:
    return int(connection.scalar(select(func.count()).select_from(table).where(where)) or 0)


# -- webhook deliveries ---------------------------------------------------------------------


def _settled(older_than: datetime) -> ColumnElement[bool]:
    """Delivered or failed for good, last tried (``next_attempt_at``: the end of the last
    attempt's lease) and delivered before ``older_than``; matches the (status, next) index."""
    rows = DELIVERIES.c
    return and_(rows.status.in_(SETTLED_DELIVERIES), rows.next_attempt_at < older_than,
                or_(rows.delivered_at.is_(None), rows.delivered_at < older_than))


def _prune_deliveries(store: JobStore, older_than: datetime, batch: int, *,
                      dry_run: bool) -> int:
    rows = DELIVERIES.c
    if dry_run:
        with store._reading() as connection:
            return _count(connection, DELIVERIES, _settled(older_than))
    deleted = 0
    while True:
        some = select(rows.id).where(_settled(older_than)).order_by(rows.id).limit(batch)
        with store._writing() as connection:
            ids = list(connection.execute(some).scalars())
            if ids:
                deleted += connection.execute(
                    delete(DELIVERIES).where(_among(rows.id, ids))).rowcount
        if len(ids) < batch:
            return deleted
