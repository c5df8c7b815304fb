"""``JobStore``: the job table, its history and the worker/task mappings, behind one object.

Every change to a job goes through ``update_job``, a compare-and-set on the row's
``version``: the handler's rules run on a snapshot, and the write lands only if nobody
wrote in between, else the rules run again on the fresh row. That is what keeps many
worker processes from lowering a percentage or reopening a finished job.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

from sqlalchemy import Connection, Engine, delete, func, inspect, select
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from morag_jobs import _config, settings
from morag_jobs.errors import ConcurrencyConflict, JobExists, JobNotFound, StoreUnavailable
from morag_jobs.events import utc_now
from morag_jobs.logs import get_logger
from morag_jobs.stages import StagePlan
from morag_jobs.store import queries as q
from morag_jobs.store.engine import create_store_engine, masked_url, parse_url, sqlite_file
from morag_jobs.store.migrate import migrate as run_migrations
from morag_jobs.store.parents import parent_change, parent_update
from morag_jobs.store.records import HistoryEntry, Job, JobChanges, JobStatus

__all__ = [
    "HistoryEntry",
    "Job",
    "JobChanges",
    "JobStatus",
    "JobStore",
    "Mutation",
    "upgrade_database",
]

_OUTAGES = (DBAPIError, PoolTimeout, DisconnectionError)
"""What the store reports as ``StoreUnavailable``: the driver's errors and the pool's (all
connections busy, a connection lost). SQLAlchemy's usage errors stay what they are: bugs."""
log = get_logger(__name__)

Mutation = Callable[[Job], tuple[JobChanges, Mapping[str, Any] | None] | None]
"""The handler's rules as a pure function: a snapshot in, (changes, history) or None out."""

MAX_ID_LENGTH = 64
_NO_TABLES = "the job tables (jobs, job_events, ...) are missing; run `morag-jobs db upgrade`"
_NO_FILE = "the database file does not exist; run `morag-jobs db upgrade` to create it"


class JobStore:
    """The durable job table on SQLite (default) or PostgreSQL.

    ``migrate`` decides what the first use does to the schema:

    - ``None`` (default): a SQLite database without the job table is created and
      migrated; PostgreSQL is migrated explicitly (``upgrade()`` or ``morag-jobs db
      upgrade``), and a PostgreSQL database without the tables is ``StoreUnavailable``
      saying so.
    - ``True``: migrate to the newest schema on first use, PostgreSQL included (safe
      with many processes starting at once: migrations are serialized).
    - ``False``: use the database as it is: never create a SQLite file or a table
      (a missing one is ``StoreUnavailable`` saying to run ``morag-jobs db upgrade``).

    ``create_tables`` is the older name of ``migrate`` and means the same.
    Driver errors leave as ``StoreUnavailable`` (see ``_translated``); the caller (the
    handler) owns the retry policy.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Engine | None = None,
        history_limit: int | None = 1000,
        migrate: bool | None = None,
        create_tables: bool | None = None,
        echo: bool = False,
    ) -> None:
        if history_limit is not None and history_limit < 1:
            raise ValueError(f"history_limit must be at least 1 (or None), not {history_limit}")
        if None not in (migrate, create_tables) and migrate != create_tables:
            raise ValueError(f"migrate={migrate} and create_tables={create_tables} disagree: "
                             "pass migrate alone (create_tables is its older name)")
        self._owns_engine = engine is None
        if engine is None:
            engine = create_store_engine(parse_url(url or settings.database_url()), echo=echo)
        self._engine = engine
        self._dialect = engine.dialect.name
        self._history_limit = history_limit
        # Trim at most every ~10 % of the limit: a job may briefly hold that many extra events.
        self._trim_every = max(1, history_limit // 10) if history_limit else 0
        self._migrate = migrate if migrate is not None else create_tables
        self._ready = False
        self._ready_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return masked_url(self._engine.url)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def history_limit(self) -> int | None:
        return self._history_limit

    def __repr__(self) -> str:
        return f"JobStore({self.url!r})"

    def close(self) -> None:
        """Close pooled connections (of an engine this store created)."""
        if self._owns_engine:
            self._engine.dispose()

    dispose = close

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Run the packaged Alembic migrations up to the newest; a no-op when already there.

        Creates a SQLite file that does not exist yet. A database whose revision this
        version does not know raises ``MigrationFailed`` (a ``MoragJobsError``).
        """
        self._check_reachable()
        with self._translated():
            run_migrations(self._engine)
        self._ready = True
        log.info("job database migrated", url=self.url)

    @property
    def sqlite_file(self) -> Path | None:
        """The file of a SQLite database; None for a server or an in-memory database."""
        return sqlite_file(self._engine.url)

    def exists(self) -> bool:
        """False when the database is a SQLite file that does not exist; asking creates
        nothing. A server's database is taken to exist: ``ensure_ready`` reaches it."""
        path = self.sqlite_file
        return path is None or path.exists()

    def ensure_ready(self) -> None:
        """Reach the database (``StoreUnavailable`` if it cannot) and prepare its schema as
        ``migrate`` says (see the class); ``StoreUnavailable`` when the job tables are
        missing and are not to be created.

        Every query does this first; call it to learn of an outage before the first one.
        """
        self._ensure_ready()

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            if self._migrate is False and not self.exists():
                # Before connecting: SQLite would create the file.
                raise StoreUnavailable(self.url, _NO_FILE)
            self._check_reachable()
            with self._translated():
                self._prepare_schema()
            self._ready = True

    def _prepare_schema(self) -> None:
        """Migrate when told to (or a new SQLite's), else insist that the tables exist."""
        if self._migrate:
            run_migrations(self._engine)
            log.info("job database migrated", url=self.url)
            return
        if self._has_tables():
            return
        if self._migrate is None and self._dialect == "sqlite":
            run_migrations(self._engine)
            log.info("job database migrated", url=self.url)
            return
        raise StoreUnavailable(self.url, _NO_TABLES)

    def _check_reachable(self) -> None:
        with self._translated(), self._engine.connect():
            pass

    def _has_tables(self) -> bool:
        with self._engine.connect() as connection:
            return inspect(connection).has_table(q.JOBS.name)

    def _reason(self, error: SQLAlchemyError) -> str:
        """The driver's first line, with the password scrubbed should a driver echo it."""
        orig = getattr(error, "orig", None)
        text = str(orig if orig is not None else error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        if getattr(orig, "sqlstate", None) == "42P01" or reason.startswith("no such table"):
            reason = f"{reason}: the job tables are missing; run `morag-jobs db upgrade`"
        password = self._engine.url.password
        return reason.replace(str(password), "***") if password else reason

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads; driver errors leave as ``StoreUnavailable``."""
        self._ensure_ready()
        with self._translated(), self._engine.connect() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction; driver errors leave as ``StoreUnavailable`` (after rollback)."""
        self._ensure_ready()
        with self._translated(), self._engine.begin() as connection:
            yield connection

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The one place a driver's error becomes the project's: ``StoreUnavailable``
        with the driver's first line, password masked. Nothing outside ``store/`` needs
        to know SQLAlchemy's exception tree (as httpx maps httpcore's in one function);
        a method that expects a constraint violation catches it inside the block."""
        try:
            yield
        except _OUTAGES as error:
            raise StoreUnavailable(self.url, self._reason(error)) from error

    # -- jobs ---------------------------------------------------------------------------

    def create_job(
        self,
        *,
        name: str | None = None,
        job_type: str | None = None,
        user_id: str | None = None,
        stages: StagePlan | None = None,
        job_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        worker_id: str | None = None,
        claim: str | None = None,
        lease_seconds: float | None = None,
    ) -> Job:
        """A new PENDING job, with the stage plan given (``ProgressHandler.create_job`` is the
        one that looks up the plan registered for ``job_type``: the store reads no registry)."""
        job_id = _checked_id(job_id) if job_id is not None else uuid.uuid4().hex
        if lease_seconds is not None and not 0 < lease_seconds <= _config.MAX_LEASE:
            raise ValueError(f"a lease is positive seconds up to {_config.MAX_LEASE:g}, "
                             f"got {lease_seconds}")
        now = utc_now()
        values = {
            "id": job_id, "name": name, "job_type": job_type, "user_id": user_id,
            "status": JobStatus.PENDING, "percentage": 0.0, "summary": "",
            "metadata": dict(metadata or {}),
            "stages": stages,
            "webhook_url": webhook_url, "worker_id": worker_id, "claim": claim,
            "lease_seconds": lease_seconds,
            # A lease runs from when it is granted: a worker that never reports is failed.
            "lease_until": now + timedelta(seconds=lease_seconds) if lease_seconds else None,
            "created_at": now, "updated_at": now, "version": 0, "ignored_count": 0,
        }  # fmt: skip
        with self._writing() as connection:
            try:
                row = connection.execute(q.insert_job(values)).one()
            except IntegrityError as error:  # before the boundary turns it into an outage
                raise JobExists(job_id) from error
        log.debug("job created", job_id=job_id, job_type=job_type)
        return Job.from_row(row._mapping)

    def get_job(
        self, job_id: str, *, user_id: str | None = None, worker_id: str | None = None
    ) -> Job | None:
        """The job, or None; with ``user_id``/``worker_id`` only if that owner may see it.

        The owner is part of the query (see ``queries.owned_by``), so another owner's job
        is not read and costs what an unknown id costs.
        """
        clauses = [q.JOBS.c.id == job_id, *q.owned_by(user_id=user_id, worker_id=worker_id)]
        with self._reading() as connection:
            row = connection.execute(q.select_jobs(*clauses)).first()
        return Job.from_row(row._mapping) if row is not None else None

    def require_job(self, job_id: str) -> Job:
        """Like ``get_job``, but a missing job raises ``JobNotFound``."""
        job = self.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list_jobs(
        self, *, limit: int | None = 50, offset: int = 0, order_by: str = "-created_at",
        **filters: Unpack[q.JobFilters],
    ) -> list[Job]:
        """Jobs matching every filter of ``q.JobFilters`` given (``status``, ``user_id``,
        ``job_type``, ``created_after``/``created_before``/``updated_after``, exclusive), a
        page at a time."""
        if (limit is not None and limit < 0) or offset < 0:
            raise ValueError(f"limit and offset cannot be negative (got {limit}, {offset})")
        clauses = q.job_filters(**filters)
        query = q.select_jobs(*clauses).order_by(*q.job_order(order_by)).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as connection:
            return [Job.from_row(row._mapping) for row in connection.execute(query)]

    def count_jobs(self, **filters: Unpack[q.JobFilters]) -> int:
        """How many jobs ``list_jobs`` would return with the same filters and no limit."""
        clauses = q.job_filters(**filters)
        with self._reading() as connection:
            return int(connection.scalar(select(func.count()).select_from(q.JOBS).where(*clauses)))

    def count_by_status(self) -> dict[JobStatus, int]:
        """Jobs per status; every status is present, with 0 when there are none."""
        status = q.JOBS.c.status
        with self._reading() as connection:
            rows = connection.execute(select(status, func.count()).group_by(status)).all()
        counts = dict.fromkeys(JobStatus, 0)
        counts.update({JobStatus(row[0]): int(row[1]) for row in rows})
        return counts

    def delete_job(self, job_id: str) -> bool:
        """Delete a job with its history and mappings; False when there was none."""
        with self._writing() as connection:
            result = connection.execute(delete(q.JOBS).where(q.JOBS.c.id == job_id))
        return result.rowcount > 0

    # -- the atomic update ----------------------------------------------------------------

    def update_job(self, job_id: str, mutate: Mutation, *, max_attempts: int = 20) -> Job | None:
        """Apply ``mutate`` to the job atomically; the new snapshot, or None if it changed nothing.

        ``mutate`` may run several times (once per lost race), each time on a fresh
        snapshot, so it must be pure. ``history``, when given, becomes one ``job_events``
        row in the same transaction; fields it leaves out are taken from the new row.
        """
        for attempt in range(1, max_attempts + 1):
            snapshot = self.require_job(job_id)
            outcome = mutate(snapshot)
            if outcome is None:
                return None
            changes, history = outcome
            written = self._compare_and_set(snapshot, changes, history)
            if written is not None:
                return written
            log.debug("job update lost a race; retrying", job_id=job_id, attempt=attempt)
            _back_off(attempt)
        raise ConcurrencyConflict(job_id, max_attempts)

    def _compare_and_set(
        self, snapshot: Job, changes: JobChanges, history: Mapping[str, Any] | None
    ) -> Job | None:
        values = q.column_values(changes, utc_now())
        if history is not None:
            q.check_history(history)
        with self._writing() as connection:
            row = connection.execute(q.compare_and_set(snapshot, values)).first()
            if row is None:
                return None
            job = Job.from_row(row._mapping)
            if history is not None:
                connection.execute(q.insert_event(q.event_values(job, history)))
            change = parent_change(snapshot, job) if job.parent_id is not None else None
            if change is not None:  # the parent's sums move in the child's transaction
                connection.execute(parent_update(job.parent_id, change, job.updated_at or
                                                 utc_now()))
            if self._trim_every and job.version % self._trim_every == 0:
                connection.execute(q.trim_history(job.id, self._history_limit or 0))
        return job

    def history(
        self, job_id: str, *, limit: int | None = None, after_id: int | None = None
    ) -> list[HistoryEntry]:
        """A job's history, oldest first: the first ``limit`` entries after entry ``after_id``."""
        events = q.EVENTS
        query = select(events).where(events.c.job_id == job_id).order_by(events.c.id)
        if after_id is not None:
            query = query.where(events.c.id > after_id)
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as connection:
            return [HistoryEntry.from_row(row._mapping) for row in connection.execute(query)]


def _checked_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_ID_LENGTH:
        raise ValueError(f"job id {job_id!r} must be a non-empty string of at most 64 characters")
    return job_id


def _back_off(attempt: int) -> None:
    """A short random pause after a lost race, so the same writers do not collide again."""
    time.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))


def upgrade_database(url: str | None = None) -> None:
    """Migrate the database at ``url`` (default: ``MORAG_DATABASE_URL``) to the newest schema."""
    store = JobStore(url, migrate=False)  # upgrade() itself migrates, and creates the file
    try:
        store.upgrade()
    finally:
        store.close()
