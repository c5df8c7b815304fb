"""The reads the API makes besides ``JobStore``'s own: light, batched, one small query each.

``JobReads`` answers the remote-progress cache (a job's check columns, a worker's
mapped job) and the shared stream poll (which watched jobs moved, with their new
history, and a job's newest history event). It hands out records, never rows; a database
that cannot answer raises ``StoreUnavailable`` (``JobStore._reading``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, func, select

from morag_jobs.store import queries as q
from morag_jobs.store.jobs import JobStore
from morag_jobs.store.records import HistoryEntry, Job, JobStatus

__all__ = ["JobCheck", "JobMove", "JobReads", "Seen"]

_IN_LIST: Final = 500
"""Ids per ``IN (...)``: a statement stays well under every driver's parameter limit."""

Seen = tuple[int | None, int]
"""What a watcher has of a job: its version (None: not yet read) and last history event id."""


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
class JobMove:
    """A watched job whose version moved: its row now and its history after the watcher's."""

    job: Job | None
    """None: the job was deleted."""
    history: tuple[HistoryEntry, ...] = ()


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

    def moved_jobs(self, seen: Mapping[str, Seen]) -> dict[str, JobMove]:
        """The jobs whose version is not the one seen, with their history after the one seen.

        One query for the versions of every job, then the rows and history of the moved
        ones only, on one connection.
        """
        ids = list(seen)
        with self._connection() as connection:
            versions: dict[str, int] = {}
            for page in _pages(ids):
                query = select(q.JOBS.c.id, q.JOBS.c.version).where(q.JOBS.c.id.in_(page))
                versions.update((row.id, row.version) for row in connection.execute(query))
            moved = [job_id for job_id in ids if versions.get(job_id) != seen[job_id][0]]
            return {job_id: JobMove(job, _history(connection, job, seen[job_id][1]))
                    for job_id, job in _jobs(connection, moved).items()}

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self.store._reading() as connection:
            yield connection


def _jobs(connection: Connection, ids: list[str]) -> dict[str, Job | None]:
    """``ids`` to their rows; None for those that no longer exist."""
    found: dict[str, Job | None] = dict.fromkeys(ids)
    for page in _pages(ids):
        query = q.select_jobs(q.JOBS.c.id.in_(page))
        found.update((row.id, Job.from_row(row._mapping)) for row in connection.execute(query))
    return found


def _history(
    connection: Connection, job: Job | None, after_id: int
) -> tuple[HistoryEntry, ...]:
    if job is None:
        return ()
    events = q.EVENTS
    query = select(events).where(events.c.job_id == job.id, events.c.id > after_id) \
        .order_by(events.c.id)
    return tuple(HistoryEntry.from_row(row._mapping) for row in connection.execute(query))


def _pages(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _IN_LIST):
        yield ids[start:start + _IN_LIST]
