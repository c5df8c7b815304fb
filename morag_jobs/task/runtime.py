"""The per-process runtime of the in-task layer: one handler, one parser, the running jobs.

Task code only touches its ``JobContext``; this module turns the contexts' latest
state into events for the ``ProgressHandler`` once per interval (so a tight loop of
``report_progress`` calls costs no I/O), keeps running jobs' heartbeats fresh for the
reaper, and drives the job through its lifecycle (start, completion, failure). It knows
no task framework: an adapter (``morag_jobs.celery``) calls ``begin``/``start``/
``complete`` from its framework's hooks, and may subclass it to attach listeners of its
own (``_assemble``).

A forked pool child must not share its parent's database connections or threads, so
the runtime rebuilds its handler the first time it is used in a new process.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from morag_jobs import _config, settings
from morag_jobs.handler import ProgressHandler
from morag_jobs.logs import get_logger
from morag_jobs.parser import ProgressEventParser
from morag_jobs.reaper import DEFAULT_TIMEOUT
from morag_jobs.store import JobStore
from morag_jobs.task.context import JobContext, bind, unbind

__all__ = ["Runtime", "RuntimeConfig", "default_runtime", "job_context", "set_default_runtime"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """The settings a worker operator may change (``install``, worker options, environment)."""

    database_url: str | None = None
    interval: float = _config.WRITE_INTERVAL
    heartbeat_interval: float = _config.HEARTBEAT_INTERVAL
    log_tap: bool = True
    reap_timeout: float | None = DEFAULT_TIMEOUT
    redelivery_timeout: float | None = None  # None: MORAG_REDELIVERY_TIMEOUT, else 600
    pattern_dirs: tuple[str | Path, ...] = ()  # packs for the parser, after MORAG_PATTERN_DIRS


class Runtime:
    """One per worker process (rebuilt after fork): the handler, the parser, the running jobs."""

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        self._pid: int | None = None
        self._handler: ProgressHandler | None = None
        self._parser: ProgressEventParser | None = None
        self._contexts: set[JobContext] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        weak = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(weak))

    def _forget_parent(self) -> None:
        """In a forked child: nothing of the parent's threads, locks or connections.

        A fork can happen while another thread holds ``_lock`` (the reaper building the
        handler, say); the child would then wait on it forever. The parent's database
        connections are left to the parent (``dispose(close=False)``). The parser holds
        no such thing and is kept.
        """
        old = self._handler
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._contexts = set()
        self._handler = None
        self._pid = None
        if old is not None:
            old.store.engine.dispose(close=False)

    @property
    def handler(self) -> ProgressHandler:
        """This process's handler, built on first use (and again after a fork)."""
        return self._ensure_process()

    @property
    def parser(self) -> ProgressEventParser:
        """The one parser of the log tap, ``progress_processor`` and ``run_with_progress``.

        Built on first use with the built-in packs, ``MORAG_PATTERN_DIRS`` and the
        configured ``pattern_dirs`` (a broken pack raises ``PatternPackError`` here).
        """
        parser = self._parser
        if parser is None:
            parser = self._parser = ProgressEventParser(self.config.pattern_dirs)
        return parser

    def _ensure_process(self) -> ProgressHandler:
        if self._pid != os.getpid() or self._handler is None:
            with self._lock:
                if self._pid != os.getpid() or self._handler is None:
                    self._build()
        assert self._handler is not None
        return self._handler

    def _build(self) -> None:
        store = JobStore(self.config.database_url or settings.database_url())
        self._handler = self._assemble(ProgressHandler(store=store, interval=self.config.interval))
        self._contexts = set()
        self._wake = threading.Event()
        self._thread = None
        self._pid = os.getpid()

    def _assemble(self, handler: ProgressHandler) -> ProgressHandler:
        """Attach the listeners this runtime's host wants (an adapter's hook)."""
        return handler

    # -- the life of one job in this process -------------------------------------------

    def begin(self, job_id: str, task_id: str | None = None) -> JobContext:
        """Track a job that starts running here."""
        self._ensure_process()
        context = JobContext(job_id, task_id, self)
        with self._lock:
            self._contexts.add(context)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="morag-jobs-flusher",
                                                daemon=True)
                self._thread.start()
        return context

    def start(self, context: JobContext, *, worker: str | None, redelivery_ok: bool) -> None:
        """PROCESSING now, when the job row exists (a task sent by ``submit``)."""
        started = self.handler.handle_job_start(
            context.job_id, worker=worker, redelivery_ok=redelivery_ok)
        context.known = started is not None
        if started is not None:
            context.attempt = started.attempt

    def end(self, context: JobContext) -> None:
        """Hand the job's last reported state to the handler and stop tracking it.

        Untracked first: an adapter's listener mirrors only jobs still running here, and
        the framework has stored the task's final state by the time its hooks call this.
        """
        with self._lock:
            self._contexts.discard(context)
            self._untracked(context)
        self._push(context)

    def complete(
        self, context: JobContext, success: bool, message: str | None, *, result: Any = None
    ) -> None:
        """The task ended: the last progress, then FINISHED or FAILED, written now.

        ``message`` None keeps the task's last message as the job's; ``result`` (a small
        JSON value) is kept in the job's metadata.
        """
        self.end(context)
        if context.known:
            self.handler.handle_job_completion(context.job_id, success, message, result=result,
                                               attempt=context.attempt)

    def fail(self, context: JobContext, message: str) -> None:
        """A stage failed inside a running task: the job is FAILED now."""
        self._push(context)
        context.known = True
        self.handler.handle_job_completion(context.job_id, False, message)

    def flush(self) -> None:
        """Push every running job's latest state and write it (tests, shutdown)."""
        for context in self._running():
            self._push(context)
        self.handler.flush()

    def close(self) -> None:
        """Write what is pending, stop the threads and close the database connections."""
        if self._handler is not None and self._pid == os.getpid():
            self.flush()
            self._stopping = True
            self._wake.set()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(10)
            self._handler.close()
            self._handler.store.close()

    def has_stage_plan(self, context: JobContext) -> bool:
        """Whether the job has a stage plan (read once per running job)."""
        if context.has_plan is None:
            try:
                job = self.handler.store.get_job(context.job_id)
            except Exception:  # unknown for now: assume the common case, a plan
                log.warning("could not read the job's stage plan", job_id=context.job_id)
                return True
            context.has_plan = job is not None and job.stages is not None
        return context.has_plan

    # -- what an adapter adds -----------------------------------------------------------

    def _untracked(self, context: JobContext) -> None:
        """A job stopped running here (called under ``_lock``)."""

    def _flusher_stopped(self) -> None:
        """The flusher thread ends: release what it held of the adapter's."""

    # -- the flusher thread -------------------------------------------------------------

    def _running(self) -> list[JobContext]:
        with self._lock:
            return list(self._contexts)

    def _push(self, context: JobContext) -> None:
        event = context.take()
        if event is not None:
            self.handler.apply(event, context.job_id)
        self._learn_ended(context)

    def _learn_ended(self, context: JobContext) -> None:
        """The job ended elsewhere (cancelled from the API, failed by a reaper): the task's
        next report raises ``JobCancelled``. Known from this process's own writes."""
        if context.cancelled is not None or not context.known:
            return
        context.cancelled = self.handler.stop_reason(context.job_id, context.attempt)

    def _run(self) -> None:
        try:
            self._flush_forever()
        finally:
            self._flusher_stopped()

    def _flush_forever(self) -> None:
        last_heartbeat = time.monotonic()
        while not self._stopping:
            self._wake.wait(self.config.interval)
            running = self._running()
            try:
                for context in running:
                    self._push(context)
                if time.monotonic() - last_heartbeat >= self.config.heartbeat_interval:
                    last_heartbeat = time.monotonic()
                    self.handler.heartbeat(c.job_id for c in running)
                    for context in running:
                        self._learn_ended(context)
            except Exception:  # the flusher must survive anything: heartbeats depend on it
                log.exception("progress flush failed")


def _reset_in_child(weak: weakref.ref[Runtime]) -> None:
    runtime = weak()
    if runtime is not None:
        runtime._forget_parent()


_default: Runtime | None = None


def default_runtime() -> Runtime:
    """The runtime an adapter's ``install()`` configured, else one built from the environment."""
    global _default  # noqa: PLW0603 - one runtime per process, set by install()
    if _default is None:
        _default = Runtime()
    return _default


def set_default_runtime(runtime: Runtime) -> None:
    global _default  # noqa: PLW0603 - see default_runtime
    _default = runtime


@contextmanager
def job_context(
    job_id: str, *, task_id: str | None = None, runtime: Runtime | None = None
) -> Iterator[JobContext]:
    """Report progress to ``job_id`` from code that is not a task (scripts, tests).

    What is reported inside is handed to the handler when the block ends (and once per
    interval while it runs); completing the job is left to the caller.
    """
    active = runtime or default_runtime()
    context = active.begin(job_id, task_id)
    context.known = True
    token = bind(context)
    try:
        yield context
    finally:
        unbind(token)
        active.end(context)
