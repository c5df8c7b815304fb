"""The durable job table and everything else kept in the database; the only SQL there is.

``JobStore`` owns the engine, the migrations, the jobs and their history;
``MappingStore``, ``KeyStore``, ``OutboxStore`` and ``JobReads`` are built on it for
the worker/task routes, the API keys, the webhook outbox and the API's own reads.
Driver errors leave this package as the project's ``StoreUnavailable`` (see
``JobStore._translated``), so no other package imports SQLAlchemy (``tests/test_layers.py``
holds it to that).
"""

from __future__ import annotations

from morag_jobs.store.family import Family
from morag_jobs.store.jobs import JobStore, Mutation, upgrade_database
from morag_jobs.store.keys import KeyStore
from morag_jobs.store.mappings import MappingStore
from morag_jobs.store.outbox import OutboxStore
from morag_jobs.store.reads import JobReads
from morag_jobs.store.records import HistoryEntry, Job, JobChanges, JobEventRecord, JobStatus

__all__ = [
    "Family",
    "HistoryEntry",
    "Job",
    "JobChanges",
    "JobEventRecord",
    "JobReads",
    "JobStatus",
    "JobStore",
    "KeyStore",
    "MappingStore",
    "Mutation",
    "OutboxStore",
    "upgrade_database",
]
