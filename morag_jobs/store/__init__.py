"""The durable job table: SQLAlchemy models, packaged Alembic migrations, atomic updates."""

from __future__ import annotations

from morag_jobs.store.records import Job, JobChanges, JobEventRecord, JobStatus
from morag_jobs.store.store import JobStore, Mutation, upgrade_database

__all__ = [
    "Job",
    "JobChanges",
    "JobEventRecord",
    "JobStatus",
    "JobStore",
    "Mutation",
    "upgrade_database",
]
