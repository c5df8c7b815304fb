"""The reads the API makes besides ``JobStore``'s own: light, batched, one small query each.

``JobReads`` answers the remote-progress cache (a job's check columns, a worker's
mapped job), the shared stream poll (``changes``: the jobs changed and the history
written since its cursors, one connection per poll however many streams are open; and a
stream's own start or resume, ``job_since`` and ``jobs_changed``) and the job list's
total (``count_jobs_up_to``: a count that stops at a cap, so a page of a million jobs
does not pay a full ``count(*)``).
It hands out records, never rows; a database that cannot answer raises
``StoreUnavailable`` (``JobStore._reading``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Unpack

from sqlalchemy import ColumnElement, Connection, Row, Select, and_, func, literal, or_, select

from morag_jobs.store import queries as q
from morag_jobs.store.jobs import JobStore
from morag_jobs.store.records import HistoryEntry, Job, JobStatus

__all__ = ["HISTORY_BASELINE", "Changes", "JobCheck", "JobCount", "JobReads", "JobStart",
           "count_up_to"]

_IN_LIST: Final = 500
"""Ids per ``IN (...)``: a statement stays well under every driver's parameter limit."""

_JOB_PAGE: Final = 1000
_HISTORY_PAGE: Final = 5000
HISTORY_BASELINE: Final = 256
"""A poll with no history cursor yet reads the rows of the newest this many ids: the ids
among them not there yet (a transaction still open) become its first gaps."""


@dataclass(frozen=True, slots=True)
class JobCheck:
    """The columns a progress report is checked against: a light snapshot of the row."""

    id: str
    status: JobStatus
    worker_id: str | None
    version: int
    last_sequence: int | None
    last_event_at: datetime | None
    last_event_clock: str | None
    summary: str

    @classmethod
    def of(cls, job: Job) -> JobCheck:
        return cls(job.id, job.status, job.worker_id, job.version, job.last_sequence,
                   job.last_event_at, job.last_event_clock, job.summary)


_CHECK_COLUMNS = [q.JOBS.c[name] for name in JobCheck.__dataclass_fields__]


@dataclass(frozen=True, slots=True)
class Changes:
    """What one stream poll read (:meth:`JobReads.changes`)."""

    jobs: tuple[Job, ...]
    """The jobs updated after the cursor, oldest update first (then by id)."""
    history_ids: tuple[int, ...]
    """The ids of the history rows read, ascending."""
    history: tuple[HistoryEntry, ...] = ()
    """The rows themselves, when they were asked for."""
    existing: frozenset[str] | None = None
    """Which of the job ids to check exist; None when none were given."""


@dataclass(frozen=True, slots=True)
class JobStart:
    """Where a job stream starts (:meth:`JobReads.job_since`)."""

    job: Job | None
    """None: no such job (any more), or not the user's."""
    history: tuple[HistoryEntry, ...]
    """Its history after the id asked for, oldest first."""
    cursor: int
    """The id of the newest history row read (or asked after): the stream's position."""


@dataclass(frozen=True, slots=True)
class JobCount:
    """How many jobs match: exactly, or at least ``total`` when counting stopped at the cap."""

    total: int
    lower_bound: bool = False
    """True: more than ``total`` jobs match (``total`` is the cap); False: exactly ``total``."""


def count_up_to(cap: int, **filters: Unpack[q.JobFilters]) -> Select[tuple[int]]:
    """``SELECT count(*) FROM (SELECT 1 FROM jobs WHERE ... LIMIT cap + 1)``: reads at most
    ``cap + 1`` index entries or rows, however many jobs match."""
    if cap < 0:
        raise ValueError(f"cap cannot be negative, not {cap}")
    matching = select(literal(1)).select_from(q.JOBS).where(*q.job_filters(**filters))
    return select(func.count()).select_from(matching.limit(cap + 1).subquery("capped"))


class JobReads:
    """The API's reads of one ``JobStore``."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def job_checks(self, job_ids: list[str]) -> dict[str, JobCheck]:
        """The check columns of those of ``job_ids`` that exist."""
        query = select(*_CHECK_COLUMNS).where(q.JOBS.c.id.in_(job_ids))
        with self._connection() as connection:
            return {row.id: JobCheck(*row) for row in connection.execute(query)}

    def jobs_of_workers(self, worker_ids: list[str]) -> dict[str, str]:
        """The job each of ``worker_ids`` is mapped to, for those mapped to one."""
        table = q.MAPPINGS
        query = select(table.c.key, table.c.job_id).where(
            table.c.kind == "worker", table.c.key.in_(worker_ids)
        )
        with self._connection() as connection:
            return {row.key: row.job_id for row in connection.execute(query)}

    def last_event_id(self, job_id: str) -> int:
        """The id of the job's newest history event, 0 when it has none."""
        events = q.EVENTS
        query = select(func.max(events.c.id)).where(events.c.job_id == job_id)
        with self._connection() as connection:
            return int(connection.scalar(query) or 0)

    def count_jobs_up_to(self, cap: int, **filters: Unpack[q.JobFilters]) -> JobCount:
        """``JobStore.count_jobs`` counting no further than ``cap``: exact up to ``cap``
        matching jobs, else ``JobCount(cap, lower_bound=True)``. Its cost is at most
        ``cap + 1`` rows read, where a full ``count(*)`` reads every matching one."""
        query = count_up_to(cap, **filters)
        with self._connection() as connection:
            counted = int(connection.scalar(query) or 0)
        return JobCount(cap, lower_bound=True) if counted > cap else JobCount(counted)

    def changes(
        self, updated_after: datetime, history_after: int | None,
        gaps: Collection[int] = (), *, seen: Mapping[str, int] | None = None,
        rows: bool = True, check: Collection[str] = (),
    ) -> Changes:
        """The stream poll's one read, on one connection, whatever the number of streams.

        The jobs updated after ``updated_after`` whose version is not the one ``seen``
        (the ids and versions of all are read first, the rows of those only); the history
        rows after id ``history_after`` and those of ``gaps`` (ids passed over earlier,
        perhaps taken by a transaction that had not committed yet) -- with
        ``history_after`` None, the rows of the newest ``HISTORY_BASELINE`` ids; only
        their ids unless ``rows``; and which of the jobs to ``check`` still exist. A job
        with new history rows that the first read missed (its write committed in
        between, or its writer's clock runs behind the cursor) is read too.
        """
        seen = seen or {}
        with self._connection() as connection:
            heads = _changed(connection, updated_after, full=False)
            ids, owners, history = _new_history(connection, history_after, gaps, rows)
            wanted = {row.id for row in heads if seen.get(row.id, -1) < row.version}
            if history_after is not None:
                wanted |= owners - {row.id for row in heads}
            jobs = sorted((Job.from_row(row._mapping) for page in _pages(sorted(wanted))
                           for row in connection.execute(q.select_jobs(q.JOBS.c.id.in_(page)))),
                          key=lambda job: (job.updated_at or updated_after, job.id))
            existing = None
            if check:
                wanted = list(check)
                existing = frozenset(
                    row.id for page in _pages(wanted)
                    for row in connection.execute(select(q.JOBS.c.id).where(q.JOBS.c.id.in_(page))))
        return Changes(tuple(jobs), ids, history, existing)

    def jobs_changed(self, updated_after: datetime, *, user_id: str | None = None
                     ) -> tuple[Job, ...]:
        """The jobs (the user's, with ``user_id``) updated after ``updated_after``, oldest
        update first: what a resumed or lagging all-jobs stream missed."""
        with self._connection() as connection:
            return tuple(Job.from_row(row._mapping)
                         for row in _changed(connection, updated_after, user_id))

    def job_since(self, job_id: str, after_id: int | None, *, user_id: str | None = None
                  ) -> JobStart:
        """A job stream's start: the job (the user's only, with ``user_id``), then its
        history after ``after_id`` (a resumed stream: every row it missed) or, with
        ``after_id`` None, only the id of its newest row."""
        events = q.EVENTS
        query = q.select_jobs(q.JOBS.c.id == job_id, *q.owned_by(user_id=user_id))
        with self._connection() as connection:
            row = connection.execute(query).first()
            if row is None:
                return JobStart(None, (), after_id or 0)
            job = Job.from_row(row._mapping)
            if after_id is None:
                newest = select(func.max(events.c.id)).where(events.c.job_id == job_id)
                return JobStart(job, (), int(connection.scalar(newest) or 0))
            rows = connection.execute(
                select(events).where(events.c.job_id == job_id, events.c.id > after_id)
                .order_by(events.c.id))
            history = tuple(HistoryEntry.from_row(row._mapping) for row in rows)
        return JobStart(job, history, history[-1].id if history else after_id)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self.store._reading() as connection:
            yield connection


def _changed(
    connection: Connection, after: datetime, user_id: str | None = None, *, full: bool = True
) -> list[Row[Any]]:
    """The rows (``full``) or the id, version and ``updated_at`` of the jobs updated after
    ``after``, in (updated_at, id) order, a page per statement: each an index range read
    (``ix_jobs_updated_at_id``) from where the last one stopped."""
    jobs = q.JOBS
    columns = [jobs] if full else [jobs.c.id, jobs.c.version, jobs.c.updated_at]
    owner = q.owned_by(user_id=user_id)
    found: list[Row[Any]] = []
    since: ColumnElement[bool] = jobs.c.updated_at > after
    while True:
        query = select(*columns).where(since, *owner).order_by(jobs.c.updated_at, jobs.c.id) \
            .limit(_JOB_PAGE)
        page = list(connection.execute(query))
        found += page
        if len(page) < _JOB_PAGE:
            return found
        last = page[-1]
        since = or_(jobs.c.updated_at > last.updated_at,
                    and_(jobs.c.updated_at == last.updated_at, jobs.c.id > last.id))


def _new_history(
    connection: Connection, after: int | None, gaps: Collection[int], rows: bool
) -> tuple[tuple[int, ...], set[str], tuple[HistoryEntry, ...]]:
    """The history rows after ``after`` or among ``gaps``, by id: their ids, their jobs,
    and (``rows``) the rows."""
    events = q.EVENTS
    if after is None:
        newest = select(func.coalesce(func.max(events.c.id), 0)).scalar_subquery()
        clause: ColumnElement[bool] = events.c.id > newest - HISTORY_BASELINE
    else:
        clause = events.c.id > after
        if gaps:
            clause = or_(clause, events.c.id.in_(sorted(gaps)[-_IN_LIST:]))
    ids: list[int] = []
    owners: set[str] = set()
    history: list[HistoryEntry] = []
    columns = [events] if rows else [events.c.id, events.c.job_id]
    while True:
        query = select(*columns).where(clause).order_by(events.c.id).limit(_HISTORY_PAGE)
        page = connection.execute(query).all()
        ids += [row.id for row in page]
        owners.update(row.job_id for row in page)
        if rows:
            history += [HistoryEntry.from_row(row._mapping) for row in page]
        if len(page) < _HISTORY_PAGE:
            return tuple(ids), owners, tuple(history)
        clause = events.c.id > page[-1].id


def _pages(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _IN_LIST):
        yield ids[start:start + _IN_LIST]
