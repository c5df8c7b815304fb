"""What the reaper needs from the database: one pass at a time, and the jobs awaiting redelivery.

Workers and servers all run the reaper, so a pass first takes a lock that spans
processes and is skipped when another process holds it:

- PostgreSQL: ``pg_try_advisory_xact_lock`` on a fixed key (per schema, so deployments
  sharing a database by schema do not wait on each other), held by a transaction that
  stays open for the pass. The server releases it when that transaction ends, and when
  its connection drops, so a process killed mid-pass never leaves it taken.
- SQLite: ``flock`` on a file beside the database (``<database>.reaper.lock``). A row in
  the database would block every writer (``BEGIN IMMEDIATE``) or need a lease to expire
  after a crash; an ``flock`` is released by the kernel when its holder dies, and every
  process that shares a SQLite file shares its directory. A ``:memory:`` database lives
  in one process, so a thread lock is enough there.

Passes stay idempotent (every change is a compare-and-set), so the lock saves work and
keeps two passes from requeueing the same job twice in a row; it is not what keeps the
job table right.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, select

from morag_jobs.logs import get_logger
from morag_jobs.store import queries as q
from morag_jobs.store.records import Job, JobStatus

if TYPE_CHECKING:
    from morag_jobs.store.jobs import JobStore

__all__ = [
    "REDELIVERY_DEADLINE", "awaiting_redelivery", "expired_leases", "never_started",
    "reaper_lock", "stale_jobs",
]

log = get_logger(__name__)

REDELIVERY_DEADLINE = "redelivery_deadline"
"""The metadata key of a job the reaper sent back to PENDING to await its redelivery."""

_PG_LOCK_KEY = int.from_bytes(b"mjrp", "big")  # "morag-jobs reaper pass", fits int4
_MEMORY_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_MEMORY_LOCKS_GUARD = threading.Lock()


@contextmanager
def reaper_lock(store: JobStore) -> Iterator[bool]:
    """Hold the reaper's lock for the block if no other process does; yields whether it was got."""
    engine = store.engine
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with _advisory_lock(store) as held:
            yield held
    elif dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with _file_lock(f"{engine.url.database}.reaper.lock") as held:
            yield held
    elif dialect == "sqlite":
        with _MEMORY_LOCKS_GUARD:
            lock = _MEMORY_LOCKS.setdefault(engine, threading.Lock())
        held = lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                lock.release()
    else:  # the store supports no other database; passes are idempotent regardless
        yield True


@contextmanager
def _advisory_lock(store: JobStore) -> Iterator[bool]:
    key = select(func.pg_try_advisory_xact_lock(_PG_LOCK_KEY, func.hashtext(func.current_schema())))
    with store._writing() as connection:  # the store's transaction: its errors translated
        yield bool(connection.scalar(key))


@contextmanager
def _file_lock(path: str) -> Iterator[bool]:
    try:
        import fcntl  # noqa: PLC0415 (POSIX only; elsewhere passes run unlocked)
    except ImportError:
        yield True
        return
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:  # a read-only directory: run unlocked rather than never
        log.warning("reaper lock file unusable; running the pass unlocked", error=str(error))
        yield True
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = True
    except BlockingIOError:
        held = False
    try:
        yield held
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


def awaiting_redelivery(store: JobStore) -> list[Job]:
    """PENDING jobs the reaper sent back to await their task's redelivery, oldest first."""
    deadline = q.JOBS.c["metadata"][REDELIVERY_DEADLINE].as_string()
    query = q.select_jobs(q.JOBS.c.status == JobStatus.PENDING, deadline.is_not(None))
    with store._reading() as connection:
        rows = connection.execute(query.order_by(q.JOBS.c.updated_at, q.JOBS.c.id))
        return [Job.from_row(row._mapping) for row in rows]


def stale_jobs(store: JobStore, older_than: datetime) -> list[Job]:
    """PROCESSING jobs a Celery worker claimed, not heard from (heartbeat, progress or
    start) since ``older_than``. Jobs nobody claimed (a followed log's) are not judged."""
    last_seen = q.last_sign_of_life()
    query = q.select_jobs(q.JOBS.c.status == JobStatus.PROCESSING, q.JOBS.c.claim == "celery",
                          last_seen < older_than)
    return _jobs(store, query.order_by(last_seen, q.JOBS.c.id))


def expired_leases(store: JobStore, now: datetime) -> list[Job]:
    """Remote jobs still running whose lease ended before ``now``."""
    jobs = q.JOBS.c
    query = q.select_jobs(jobs.status.in_([JobStatus.PENDING, JobStatus.PROCESSING]),
                          jobs.claim == "remote", jobs.lease_until < now)
    return _jobs(store, query.order_by(jobs.lease_until, jobs.id))


def never_started(store: JobStore, queued_before: datetime) -> list[Job]:
    """PENDING jobs of tasks sent to Celery before ``queued_before`` that never started."""
    jobs = q.JOBS.c
    query = q.select_jobs(jobs.status == JobStatus.PENDING, jobs.claim == "queued",
                          jobs.created_at < queued_before)
    return _jobs(store, query.order_by(jobs.created_at, jobs.id))


def _jobs(store: JobStore, query: Any) -> list[Job]:
    with store._reading() as connection:
        return [Job.from_row(row._mapping) for row in connection.execute(query)]
