"""The runtime of a Celery worker: the in-task runtime plus the PROGRESS mirror and events.

``morag_jobs.task.runtime.Runtime`` does the work (the handler, the parser, the flusher,
the job lifecycle); this one also mirrors running jobs' progress into the app's result
backend in celery-progress's shape, so ``AsyncResult(task_id).info`` shows it too, and
sends it as ``task-progress`` events when the worker sends task events, for Flower,
``celery events`` and monitors of their own (``app.events.Receiver``).
"""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from celery.states import READY_STATES

from morag_jobs.handler import ProgressHandler
from morag_jobs.logs import get_logger
from morag_jobs.store import Job
from morag_jobs.task import runtime as task_runtime
from morag_jobs.task.context import JobContext
from morag_jobs.webhook_outbox import attach_outbox

__all__ = ["TASK_PROGRESS", "Runtime", "RuntimeConfig"]

log = get_logger(__name__)

TASK_PROGRESS = "task-progress"
"""The Celery event type of a running job's progress (the name Flower's proposal reads)."""
_EVENTS_BACKOFF = 30.0
"""Seconds without events after the broker refused one: a down broker costs one try."""


@dataclass(frozen=True, slots=True)
class RuntimeConfig(task_runtime.RuntimeConfig):
    """The in-task settings and the mirror's (``install``, ``app.conf``, environment)."""

    celery_progress: bool = True
    celery_progress_interval: float = 1.0
    task_events: bool = True  # ``task-progress`` events, when the worker sends task events
    task_events_interval: float = 1.0


class Runtime(task_runtime.Runtime):
    """One per worker process (rebuilt after fork), mirroring progress into ``app``'s backend."""

    config: RuntimeConfig

    def __init__(self, config: RuntimeConfig | None = None, *, app: Any = None) -> None:
        super().__init__(config or RuntimeConfig())
        self.app = app
        self.worker_task_events: bool | None = None
        """Whether the worker running here sends task events (``-E`` or
        ``worker_send_task_events``); None (no worker said): ``app.conf`` decides."""
        self.worker_hostname: str | None = None
        """The node name of the worker running here, which its own task events carry."""
        self._mirrored: dict[str, float] = {}
        self._announced: dict[str, float] = {}
        self._events_lock = threading.Lock()
        self._dispatcher: Any = None
        self._events_down_until = 0.0

    def _assemble(self, handler: ProgressHandler) -> ProgressHandler:
        """A worker ends jobs: their completion webhooks go to the durable outbox; running
        jobs are mirrored into the result backend for celery-progress clients and sent as
        ``task-progress`` events for event consumers."""
        handler.add_listener(self._mirror)
        handler.add_listener(self._announce)
        return attach_outbox(handler)

    def attach_worker(self, hostname: str | None, task_events: bool) -> None:
        """The worker this runtime runs in (from its bootstep, before the pool forks): the
        node name for its ``task-progress`` events, and whether it sends task events."""
        self.worker_hostname = hostname
        self.worker_task_events = task_events

    def _forget_parent(self) -> None:
        super()._forget_parent()
        self._mirrored = {}
        self._announced = {}
        self._events_lock = threading.Lock()
        self._dispatcher = None  # its connection is the parent's, left to the parent
        self._events_down_until = 0.0

    def _untracked(self, context: JobContext) -> None:
        self._mirrored.pop(context.job_id, None)
        self._announced.pop(context.job_id, None)

    def _flusher_stopped(self) -> None:
        _close_thread_backend(self.app)

    def close(self) -> None:
        super().close()
        _close_thread_backend(self.app)  # the writer thread's, closed with the handler
        with self._events_lock:
            self._drop_dispatcher()

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

    def _announce(self, event_type: str, job: Job) -> None:
        """A ``task-progress`` event for a job running here, after each write.

        The shape Flower's progress proposal reads (``current`` of ``total``, mher/flower
        pull request 1071) carrying the job's overall percentage as ``current`` of 100,
        so a bar never restarts at a stage; ``percent`` and ``description`` as in
        celery-progress's meta, then ``stage`` and ``job_id``. Celery adds ``uuid`` (the
        task id), ``hostname``, ``timestamp``, ``pid`` and ``clock``.

        Only when the worker sends task events and ``task_events`` is on; at most once per
        ``task_events_interval`` per job. Best effort: one thread sends at a time (another
        skips its turn rather than wait), a failure is logged and never raised, and a
        broker that refuses one is left alone for ``_EVENTS_BACKOFF`` seconds. Sent outside
        ``_lock``, so a task ending meanwhile is not held up; Celery's ``State`` treats a
        progress event that lands after the task's end as older and keeps the end.
        """
        if (event_type != "updated" or job.percentage <= 0.0 or not self.config.task_events
                or self.app is None or not self._worker_sends_events()):
            return
        now = time.monotonic()
        if (now < self._events_down_until
                or now - self._announced.get(job.id, 0.0) < self.config.task_events_interval):
            return
        with self._lock:  # a job that ended here is not announced again
            context = next((c for c in self._contexts if c.job_id == job.id), None)
            if context is None or context.task_id is None:
                return
            task_id = context.task_id
            self._announced[job.id] = now
        percent = round(job.percentage, 2)
        fields = {"current": percent, "total": 100, "percent": percent,
                  "description": job.summary, "stage": job.stage, "job_id": job.id}
        if not self._events_lock.acquire(blocking=False):
            return  # another thread is sending: skip this update rather than wait
        try:
            self._send_event(task_id, self.worker_hostname or job.metadata.get("worker"), fields)
        finally:
            self._events_lock.release()

    def _worker_sends_events(self) -> bool:
        if self.worker_task_events is not None:
            return self.worker_task_events
        return bool(self.app.conf.worker_send_task_events)

    def _send_event(self, task_id: str, hostname: str | None, fields: dict[str, Any]) -> None:
        """Send on this runtime's own dispatcher and connection (under ``_events_lock``)."""
        try:
            dispatcher = self._dispatcher
            if dispatcher is None or dispatcher.hostname != (hostname or dispatcher.hostname):
                self._drop_dispatcher()
                dispatcher = self._dispatcher = self.app.events.Dispatcher(
                    self.app.connection_for_write(), hostname=hostname, enabled=True,
                    buffer_while_offline=False)
            dispatcher.send(TASK_PROGRESS, uuid=task_id, **fields)
        except Exception:  # interop is best effort; the job table is the record
            self._events_down_until = time.monotonic() + _EVENTS_BACKOFF
            self._drop_dispatcher()
            log.warning("could not send a task-progress event", retry_in=_EVENTS_BACKOFF,
                        exc_info=True)

    def _drop_dispatcher(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            with suppress(Exception):
                dispatcher.close()
            with suppress(Exception):
                dispatcher.connection.release()


def _close_thread_backend(app: Any) -> None:
    """Close the result-backend connection Celery made for this thread (``app.backend`` is
    per thread), so a flusher that stops leaves no socket for the garbage collector."""
    if app is None or "backend" not in getattr(app._local, "__dict__", {}):
        return
    client = getattr(app.backend, "client", None)
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.disconnect()
