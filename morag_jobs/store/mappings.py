"""``MappingStore``: the ``job_mappings`` rows (worker or Celery task -> job).

A remote worker or a task that reports without naming its job is routed by these rows;
every process sees them, and they are deleted with their job (foreign key) or when the
job ends (``delete_for_job``). The cache in front of them is :mod:`morag_jobs.mappings`.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from morag_jobs.errors import JobNotFound
from morag_jobs.events import utc_now
from morag_jobs.store import queries as q
from morag_jobs.store.jobs import JobStore

__all__ = ["MappingStore"]


class MappingStore:
    """The ``job_mappings`` rows of ``store``'s database, through its connections."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def set(self, kind: q.MappingKind, key: str, job_id: str) -> None:
        """Route ``kind`` (worker or task) ``key`` to ``job_id``, replacing an earlier route."""
        q.check_mapping_kind(kind)
        values = {"kind": kind, "key": key, "job_id": job_id, "created_at": utc_now()}
        with self.store._writing() as connection:
            try:
                connection.execute(q.upsert_mapping(connection.dialect.name, values))
            except IntegrityError as error:  # the job does not exist (foreign key)
                raise JobNotFound(job_id) from error

    def get(self, kind: q.MappingKind, key: str) -> str | None:
        """The job ``key`` is routed to, or None."""
        q.check_mapping_kind(kind)
        table = q.MAPPINGS
        query = select(table.c.job_id).where(table.c.kind == kind, table.c.key == key)
        with self.store._reading() as connection:
            return connection.scalar(query)

    def delete(self, kind: q.MappingKind, key: str) -> bool:
        """Remove one route; False when there was none."""
        q.check_mapping_kind(kind)
        table = q.MAPPINGS
        with self.store._writing() as connection:
            result = connection.execute(
                delete(table).where(table.c.kind == kind, table.c.key == key)
            )
        return result.rowcount > 0

    def delete_for_job(self, job_id: str) -> int:
        """Forget every worker and task route to ``job_id`` (done when the job ends)."""
        table = q.MAPPINGS
        with self.store._writing() as connection:
            result = connection.execute(delete(table).where(table.c.job_id == job_id))
        return result.rowcount

    def items(self, kind: q.MappingKind | None = None) -> dict[tuple[str, str], str]:
        """``{(kind, key): job_id}``, for one kind or both."""
        table = q.MAPPINGS
        query = select(table.c.kind, table.c.key, table.c.job_id)
        if kind is not None:
            q.check_mapping_kind(kind)
            query = query.where(table.c.kind == kind)
        with self.store._reading() as connection:
            return {(row.kind, row.key): row.job_id for row in connection.execute(query)}
