"""The reaper: a job whose worker died (SIGKILL, OOM) must not stay PROCESSING forever.

Running jobs carry a heartbeat (refreshed by the worker plugin with every write and
at least every ``heartbeat_interval``). A pass of the reaper:

- FAILS a PROCESSING job whose heartbeat is older than the timeout ("worker lost"),
  unless its task will be delivered again (``redelivery_expected``, recorded when it
  started): that job goes back to PENDING with a deadline (``redelivery_timeout``);
- FAILS a job still PENDING past that deadline ("worker lost; not redelivered ...");
- with ``MORAG_PRUNE_AFTER`` set, at most once an hour per process, deletes what ended
  longer ago than that (``morag_jobs.store.prune``).

Every worker and every ``morag-jobs serve`` runs passes, so jobs are reaped while any
of them lives; a pass first takes a lock across processes (see
``morag_jobs.store.reaping``) and is skipped when another process holds it.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from morag_jobs import _config, rules, settings
from morag_jobs.events import utc_now
from morag_jobs.handler import ProgressHandler
from morag_jobs.logs import get_logger
from morag_jobs.store import Job, JobStore
from morag_jobs.store.prune import prune
from morag_jobs.store.reaping import (
    awaiting_redelivery,
    expired_leases,
    never_started,
    reaper_lock,
    stale_jobs,
)

__all__ = ["DEFAULT_TIMEOUT", "Pass", "Reaper", "interval_for", "reap", "reap_pass"]

log = get_logger(__name__)

DEFAULT_TIMEOUT = _config.REAP_TIMEOUT
"""Seconds without a heartbeat after which a running job is reaped."""
PRUNE_EVERY = timedelta(hours=1)
"""The least time between two prunes (``MORAG_PRUNE_AFTER``) of one store by one process."""
_pruned_at: weakref.WeakKeyDictionary[JobStore, datetime] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass did: ``ran`` is False when another process held the lock."""

    ran: bool
    reaped: list[Job] = field(default_factory=list)


def interval_for(timeout: float) -> float:
    """Seconds between passes: a quarter of the timeout (at least a second), so a dead
    worker's job is reaped at most a quarter late."""
    return max(timeout / 4, 1.0)


def reap_pass(
    handler: ProgressHandler, timeout: float, *,
    redelivery_timeout: float | None = None, pending_timeout: float | None = None,
    now: datetime | None = None,
) -> Pass:
    """One pass, if no other process is running one.

    Each rule judges only the jobs it can: a job a Celery worker claimed by its heartbeat
    (``timeout``), then by its redelivery deadline (``redelivery_timeout``, default
    ``MORAG_REDELIVERY_TIMEOUT``); a remote job by its lease; a task queued but never
    started by ``pending_timeout`` (default ``MORAG_PENDING_TIMEOUT``; ``math.inf``
    never). A job nobody claimed (a followed log's, a script's) is never reaped.

    Verdicts are written through ``handler`` (``handle_job_lost``), so its listeners see
    a reaped job as they see any other change: the webhook outbox queues a reaped job's
    ``job.failed`` through its ordinary listener, attached where the handler was
    assembled (``attach_outbox``).
    """
    waiting = _checked(timeout, redelivery_timeout)
    now = now or utc_now()
    with reaper_lock(handler.store) as held:
        if not held:
            log.debug("reaper pass skipped: another process holds the lock")
            return Pass(False)
        reaped = _reap_silent(handler, timeout, waiting, now)
        reaped += _reap_undelivered(handler, now)
        reaped += _apply(handler, expired_leases(handler.store, now),
                         lambda job: rules.lease_expired(job, now))
        queued = settings.pending_timeout() if pending_timeout is None else pending_timeout
        if queued is not None and queued < math.inf:
            before = now - timedelta(seconds=queued)
            reaped += _apply(handler, never_started(handler.store, before),
                             lambda job: rules.never_started(job, queued, now))
        _prune_if_due(handler.store, now)
        return Pass(True, reaped)


def reap(
    handler: ProgressHandler, timeout: float, *,
    redelivery_timeout: float | None = None, pending_timeout: float | None = None,
    now: datetime | None = None,
) -> list[Job]:
    """One pass (see ``reap_pass``); the jobs it reaped, none when it was skipped."""
    return reap_pass(handler, timeout, redelivery_timeout=redelivery_timeout,
                     pending_timeout=pending_timeout, now=now).reaped


def _checked(timeout: float, redelivery_timeout: float | None) -> float:
    """The redelivery timeout to use, once both timeouts are known to be positive."""
    waiting = settings.redelivery_timeout() if redelivery_timeout is None else redelivery_timeout
    for name, value in (("reap timeout", timeout), ("redelivery timeout", waiting)):
        if not value > 0:
            raise ValueError(f"the {name} must be a positive number of seconds, got {value}")
    return waiting


def _reap_silent(
    handler: ProgressHandler, timeout: float, waiting: float, now: datetime
) -> list[Job]:
    cutoff = now - timedelta(seconds=timeout)

    def mutate(job: Job) -> rules.Outcome | None:
        alive = job.heartbeat_at or job.last_progress_at or job.started_at
        if alive is not None and alive >= cutoff:
            return None  # a heartbeat arrived since the query: still running
        return rules.worker_lost(job, timeout, redelivery_timeout=waiting, now=now)

    return _apply(handler, stale_jobs(handler.store, cutoff), mutate)


def _reap_undelivered(handler: ProgressHandler, now: datetime) -> list[Job]:
    return _apply(handler, awaiting_redelivery(handler.store),
                  lambda job: rules.redelivery_missed(job, now))


def _prune_if_due(store: JobStore, now: datetime) -> None:
    """Prune what ended ``MORAG_PRUNE_AFTER`` before ``now``, unless unset or this process
    pruned ``store`` less than ``PRUNE_EVERY`` ago (a failed prune waits as long)."""
    keep = settings.prune_after()
    last = _pruned_at.get(store)
    if keep is None or (last is not None and last <= now < last + PRUNE_EVERY):
        return
    _pruned_at[store] = now
    prune(store, now - timedelta(seconds=keep))  # it logs what it deleted


def _apply(
    handler: ProgressHandler, candidates: Iterable[Job],
    mutate: Callable[[Job], rules.Outcome | None],
) -> list[Job]:
    """``mutate`` each candidate by compare-and-set: a job that moved on since it was read
    (a heartbeat, a redelivery) is judged again on its fresh row, and left alone."""
    reaped = []
    for candidate in candidates:
        job = handler.handle_job_lost(candidate.id, mutate)
        if job is None:
            continue
        log.warning("job reaped", job_id=job.id, status=job.status.value,
                    summary=job.summary)
        reaped.append(job)
    return reaped


class Reaper:
    """Passes on a daemon thread every ``interval_for(timeout)`` seconds, counted.

    ``passes`` counts the passes tried, ``skipped`` those another process was running,
    ``reaped`` the jobs reaped, ``errors`` the passes that raised (tried again later).
    """

    def __init__(
        self, handler: ProgressHandler, timeout: float = DEFAULT_TIMEOUT, *,
        redelivery_timeout: float | None = None, name: str = "morag-jobs-reaper",
    ) -> None:
        if not isinstance(handler, ProgressHandler):
            raise TypeError("Reaper needs a ProgressHandler (its verdicts go through the "
                            f"handler's listeners), not {type(handler).__name__}")
        self.handler = handler
        self.store = self.handler.store
        self.timeout = timeout
        # Checked now: a bad timeout (or MORAG_REDELIVERY_TIMEOUT) stops the start, not
        # every later pass.
        self.redelivery_timeout = _checked(timeout, redelivery_timeout)
        self.passes = self.skipped = self.reaped = self.errors = 0
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> Pass:
        """One pass now, on the caller's thread."""
        self.passes += 1
        try:
            result = reap_pass(self.handler, self.timeout,
                               redelivery_timeout=self.redelivery_timeout, now=now)
        except Exception:
            self.errors += 1
            raise
        self.skipped += not result.ran
        self.reaped += len(result.reaped)
        return result

    def start(self) -> None:
        """Run passes on a daemon thread until ``stop``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self, wait: float = 0.0) -> None:
        """No more passes; wait up to ``wait`` seconds for one in flight to end."""
        self._stop.set()
        if self._thread is not None and wait > 0:
            self._thread.join(wait)

    def _run(self) -> None:
        while not self._stop.wait(interval_for(self.timeout)):
            try:
                self.run_once()
            except Exception:  # a pass that fails is tried again next time
                log.exception("reaper pass failed")
