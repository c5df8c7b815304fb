"""The reaper: a job whose worker died (SIGKILL, OOM) must not stay PROCESSING forever.

Running jobs carry a heartbeat (refreshed by the worker plugin with every write and
at least every ``heartbeat_interval``); a PROCESSING job whose heartbeat is older than
the timeout is FAILED ("worker lost"), or sent back to PENDING when its task is
acknowledged late, because Celery will then deliver it again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from morag_jobs import rules, webhooks
from morag_jobs.events import utc_now
from morag_jobs.store import Job, JobStatus, JobStore

__all__ = ["reap"]

log = structlog.get_logger(__name__)


def _alive_at(job: Job) -> datetime | None:
    return job.heartbeat_at or job.last_progress_at or job.started_at


def reap(store: JobStore, timeout: float, *, now: datetime | None = None) -> list[Job]:
    """One pass: end (or requeue) every PROCESSING job silent for ``timeout`` seconds."""
    if timeout <= 0:
        raise ValueError(f"reap timeout must be positive, got {timeout}")
    cutoff = (now or utc_now()) - timedelta(seconds=timeout)
    reaped = []
    for stale in store.stale_jobs(cutoff):

        def mutate(job: Job) -> rules.Outcome | None:
            alive = _alive_at(job)
            if alive is not None and alive >= cutoff:
                return None  # a heartbeat arrived since the query: still running
            return rules.worker_lost(job, timeout)

        job = store.update_job(stale.id, mutate)
        if job is not None:
            log.warning("job reaped: worker lost", job_id=job.id, status=job.status.value)
            if job.status is JobStatus.FAILED:
                webhooks.enqueue(store, "failed", job)
            reaped.append(job)
    return reaped
