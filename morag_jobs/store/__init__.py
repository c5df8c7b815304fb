"""The durable job table and everything else kept in the database; the only SQL there is.

``JobStore`` owns the engine, the migrations and the jobs, history and mappings;
``KeyStore``, ``OutboxStore`` and ``JobReads`` are built on it for the API keys, the
webhook outbox and the API's own reads. Driver errors leave this package as the project's
``StoreUnavailable`` (see ``JobStore._translated``), so no other package imports SQLAlchemy
(``tests/test_layers.py`` holds it to that).
"""

from __future__ import annotations

from morag_jobs.store.jobs import JobStore, Mutation, upgrade_database
from morag_jobs.store.keys import KeyStore
from morag_jobs.store.outbox import OutboxStore
from morag_jobs.store.reads import JobReads
from morag_jobs.store.records import Job, JobChanges, JobEventRecord, JobStatus

__all__ = [
    "Job",
    "JobChanges",
    "JobEventRecord",
    "JobReads",
    "JobStatus",
    "JobStore",
    "KeyStore",
    "Mutation",
    "OutboxStore",
    "upgrade_database",
]
