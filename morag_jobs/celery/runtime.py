"""The runtime of a Celery worker: the in-task runtime plus the PROGRESS mirror.

``morag_jobs.task.runtime.Runtime`` does the work (the handler, the parser, the flusher,
the job lifecycle); this one also mirrors running jobs' progress into the app's result
backend in celery-progress's shape, so ``AsyncResult(task_id).info`` shows it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery.states import READY_STATES

from morag_jobs.handler import ProgressHandler
from morag_jobs.logs import get_logger
from morag_jobs.store import Job
from morag_jobs.task import runtime as task_runtime
from morag_jobs.task.context import JobContext
from morag_jobs.webhook_outbox import attach_outbox

__all__ = ["Runtime", "RuntimeConfig"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RuntimeConfig(task_runtime.RuntimeConfig):
    """The in-task settings and the mirror's (``install``, ``app.conf``, environment)."""

    celery_progress: bool = True
    celery_progress_interval: float = 1.0


class Runtime(task_runtime.Runtime):
    """One per worker process (rebuilt after fork), mirroring progress into ``app``'s backend."""

    config: RuntimeConfig

    def __init__(self, config: RuntimeConfig | None = None, *, app: Any = None) -> None:
        super().__init__(config or RuntimeConfig())
        self.app = app
        self._mirrored: dict[str, float] = {}

    def _assemble(self, handler: ProgressHandler) -> ProgressHandler:
        """A worker ends jobs: their completion webhooks go to the durable outbox; running
        jobs are mirrored into the result backend for celery-progress clients."""
        handler.add_listener(self._mirror)
        return attach_outbox(handler)

    def _forget_parent(self) -> None:
        super()._forget_parent()
        self._mirrored = {}

    def _untracked(self, context: JobContext) -> None:
        self._mirrored.pop(context.job_id, None)

    def _flusher_stopped(self) -> None:
        _close_thread_backend(self.app)

    def close(self) -> None:
        super().close()
        _close_thread_backend(self.app)  # the writer thread's, closed with the handler

    def _mirror(self, event_type: str, job: Job) -> None:
        """celery-progress's PROGRESS state for a job running here, after each write.

        A listener on the handler, so it sees the job as written: its overall percentage
        (mapped through the stage plan, never going down) is celery-progress's
        ``percent``; ``current``/``total`` are the stage's counts when it has them. At most
        once per ``celery_progress_interval`` per job; ending states are Celery's own.
        """
        if (event_type != "updated" or job.percentage <= 0.0 or not self.config.celery_progress
                or self.app is None):
            return  # 0% (the start) is what celery-progress shows for a STARTED task
        now = time.monotonic()
        if now - self._mirrored.get(job.id, 0.0) < self.config.celery_progress_interval:
            return
        backend = self.app.backend
        if type(backend).__name__ == "DisabledBackend":
            return
        percent = round(job.percentage, 2)
        counted = job.current is not None and job.total
        meta = {"pending": False, "current": job.current if counted else percent,
                "total": job.total if counted else 100, "percent": percent,
                "description": job.summary, "stage": job.stage}
        # Under the lock ``end`` takes: a task that has ended is never mirrored again, and
        # a final state already in the backend is never overwritten with PROGRESS.
        with self._lock:
            context = next((c for c in self._contexts if c.job_id == job.id), None)
            if context is None or context.task_id is None:
                return
            self._mirrored[job.id] = now
            try:
                if backend.get_state(context.task_id) not in READY_STATES:
                    backend.store_result(context.task_id, meta, "PROGRESS")
            except Exception:  # interop is best effort; the job table is the record
                log.warning("could not mirror progress to the result backend", exc_info=True)


def _close_thread_backend(app: Any) -> None:
    """Close the result-backend connection Celery made for this thread (``app.backend`` is
    per thread), so a flusher that stops leaves no socket for the garbage collector."""
    if app is None or "backend" not in getattr(app._local, "__dict__", {}):
        return
    client = getattr(app.backend, "client", None)
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.disconnect()
