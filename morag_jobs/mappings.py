"""Which job a progress event belongs to: the one job resolution of the package.

A remote worker or a Celery task is bound to a job by a persisted mapping (every
process sees it); a log stream asks for the same mapping on every line, so lookups are
cached for ``ttl`` seconds, misses included. The handler resolves the events it is
given here, and so does ``morag-jobs tail`` for the ids it trusts: one rule, one cache.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from morag_jobs import _config
from morag_jobs.errors import ConcurrencyConflict, StoreUnavailable
from morag_jobs.events import ProgressEvent
from morag_jobs.store import JobStore, MappingStore

__all__ = ["CACHE_MAX", "JobMappings", "Kind"]

log = logging.getLogger(__name__)

Kind = Literal["worker", "task"]
CACHE_MAX = 4096
"""Most worker/task -> job lookups kept cached (each for ``ttl``)."""


class JobMappings:
    """Persisted worker/task -> job bindings, with a short-lived cache in front."""

    def __init__(self, store: JobStore, ttl: float = _config.MAPPING_TTL) -> None:
        self.rows = MappingStore(store)
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[str | None, float]] = {}

    def bind(self, kind: Kind, key: str, job_id: str) -> None:
        """Progress from worker or task ``key`` goes to ``job_id`` from now on."""
        self.rows.set(kind, key, job_id)
        self._remember(kind, key, job_id, time.monotonic())

    def unbind(self, kind: Kind, key: str) -> bool:
        """Remove one binding; False when there was none."""
        self._cache.pop((kind, key), None)
        return self.rows.delete(kind, key)

    def lookup(self, kind: Kind, key: str) -> str | None:
        """The job bound to ``key``, from the cache while it is fresh.

        When the database is unreachable the last cached answer (however old) is used,
        else None: a lookup never raises into a log stream.
        """
        cached = self._cache.get((kind, key))
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        try:
            job_id = self.rows.get(kind, key)
        except (StoreUnavailable, ConcurrencyConflict) as error:
            log.warning("mapping lookup failed (%s %s): %s", kind, key, error)
            return cached[0] if cached is not None else None
        self._remember(kind, key, job_id, now)
        return job_id

    def resolve(self, event: ProgressEvent) -> str | None:
        """The job an event's worker id is bound to, else its task id's; None if neither."""
        if event.worker_id is not None:
            job_id = self.lookup("worker", event.worker_id)
            if job_id is not None:
                return job_id
        if event.task_id is not None:
            return self.lookup("task", event.task_id)
        return None

    def forget_job(self, job_id: str) -> None:
        """Drop every binding to an ended job, persisted and cached."""
        try:
            self.rows.delete_for_job(job_id)
        except (StoreUnavailable, ConcurrencyConflict) as error:
            log.warning("could not remove the mappings of ended job %s: %s", job_id, error)
        self._cache.pop(("task", job_id), None)  # a plain .delay() task: its id is the job's
        for key, (mapped, _) in list(self._cache.items()):
            if mapped == job_id:
                self._cache.pop(key, None)

    def _remember(self, kind: str, key: str, job_id: str | None, now: float) -> None:
        """Cache a lookup (a miss too: a plain task asks again on every line). An entry
        older than the TTL is worth nothing, so the cache keeps only the fresh ones and
        never more than CACHE_MAX: state for a task ends with the task."""
        cache = self._cache
        cache.pop((kind, key), None)  # re-inserted last: the dict is oldest first
        cache[kind, key] = (job_id, now)
        if len(cache) > CACHE_MAX:
            cutoff = now - self.ttl
            for old_key in [k for k, (_, at) in cache.items() if at < cutoff]:
                del cache[old_key]
            while len(cache) > CACHE_MAX // 2:
                del cache[next(iter(cache))]
