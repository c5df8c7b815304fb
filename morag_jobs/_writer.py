"""Coalesced, retried writes of job state: the handler's only path to the database.

Progress is *submitted*: the latest event per job waits in memory and a background
thread writes it at most once per ``interval`` per job, so a task that reports a
million times does not write a million rows. Completions are *written now*, in the
caller, after any pending progress of the same job. A write that fails (database
down, connection killed) keeps its state in memory and is retried with backoff; a
completion that cannot be written in time is queued and retried until it lands, and
a clean exit flushes whatever is still pending.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from morag_jobs import _config, rules
from morag_jobs.errors import RETRYABLE, JobExists, JobNotFound, StoreUnavailable, brief
from morag_jobs.events import ProgressEvent
from morag_jobs.logs import get_logger
from morag_jobs.store import Job, JobStore, Mutation

__all__ = ["CoalescingWriter", "WritePolicy", "supersedes"]

log = get_logger(__name__)

Tally = list[tuple[str, str, int]]
"""(source, outcome, number of events) for the events a write covered."""
Written = Callable[[str, Job | None, str, Tally], None]
"""Called after each write: (job id, new snapshot or None, kind, tallies)."""
MAX_CHAIN = 64
"""Pending events per job that could not be folded into one; more triggers a write now."""


def supersedes(newer: ProgressEvent, older: ProgressEvent) -> bool:
    """True when applying ``older`` then ``newer`` is the same as applying ``newer`` alone.

    Then the older event can be dropped from what is pending without changing the
    result, whatever the job's state turns out to be at write time: same stage, not
    earlier, a percentage at least as high, and every field the older one carries is
    carried again. A stream of rising progress folds into its latest event; anything
    else (a lower percentage, a stage change, an out-of-order event) is kept and the
    rules see each event in turn when the job is written.
    """
    return (
        newer.stage == older.stage
        and newer.timestamp >= older.timestamp
        and (older.sequence is None
             or (newer.sequence is not None and newer.sequence >= older.sequence))
        and (older.percent is None
             or (newer.percent is not None and newer.percent >= older.percent))
        and (older.current is None or newer.current is not None)
        and (not older.message or bool(newer.message))
    )


@dataclass(slots=True)
class _Pending:
    events: list[ProgressEvent]
    counts: list[int]
    create: bool

    def add(self, event: ProgressEvent) -> bool:
        """Fold or append ``event``; True when the chain has grown too long to wait."""
        if supersedes(event, self.events[-1]):
            self.events[-1] = event
            self.counts[-1] += 1
            return False
        self.events.append(event)
        self.counts.append(1)
        return len(self.events) >= MAX_CHAIN

    def absorb(self, newer: _Pending) -> None:
        """Put ``newer`` (submitted while this one was being written) after this one."""
        for event, count in zip(newer.events, newer.counts, strict=True):
            self.add(event)
            self.counts[-1] += count - 1
        self.create = self.create or newer.create

    def tally(self, verdicts: list[rules.Verdict]) -> Tally:
        return [(event.source, verdict.reason, count)
                for event, verdict, count in zip(self.events, verdicts, self.counts,
                                                 strict=False)]


@dataclass(slots=True)
class _JobClock:
    last_write: float = float("-inf")
    failures: int = 0
    retry_at: float = 0.0
    final: list[tuple[Mutation, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """When and how hard the writer writes: the one place for its timings.

    ``interval``: at most one write per job per this many seconds (0: as soon as the
    writer thread gets to it). ``sync_timeout``: how long a write made now (a completion)
    is retried in the caller before it is queued. ``max_backoff``: the ceiling of the
    exponential backoff between retries.
    """

    interval: float = _config.WRITE_INTERVAL
    sync_timeout: float = _config.SYNC_TIMEOUT
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        for name in ("interval", "sync_timeout", "max_backoff"):
            value = getattr(self, name)
            if not value >= 0:  # NaN too
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value}")


class CoalescingWriter:
    """Latest-wins pending state per job, written by one background thread per process.

    The handler's private engine: it calls back ``on_written`` after each write (the
    handler's listeners and stats), ``on_error`` after each failed attempt and
    ``create_job`` for a job named explicitly that does not exist yet.
    """

    def __init__(
        self,
        store: JobStore,
        policy: WritePolicy,
        *,
        on_written: Written,
        on_error: Callable[[str, Exception], None],
        create_job: Callable[[str], None],
    ) -> None:
        self.store = store
        self.policy = policy
        self.interval = policy.interval
        self.sync_timeout = policy.sync_timeout
        self.max_backoff = policy.max_backoff
        self._on_written = on_written
        self._on_error = on_error
        self._create_job = create_job
        self._setup()
        weak = weakref.ref(self)
        atexit.register(_flush_at_exit, weak)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(weak))

    def _setup(self) -> None:
        # Entered as the plain lock on the hot path (a C-level context manager); the
        # condition over it is for waiting and waking the writer thread.
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._pending: dict[str, _Pending] = {}
        self._clocks: dict[str, _JobClock] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy: set[str] = set()
        self._urgent: set[str] = set()

    # -- submitting ----------------------------------------------------------------------

    def submit(self, job_id: str, event: ProgressEvent, *, create: bool = False) -> None:
        """Queue ``event`` for the job's next write (folded into what is pending)."""
        with self._mutex:
            pending = self._pending.get(job_id)
            if pending is None:
                self._pending[job_id] = _Pending([event], [1], create)
                self._lock.notify()
            else:
                pending.create = pending.create or create
                if pending.add(event):
                    self._urgent.add(job_id)
                    self._lock.notify()
            if self._thread is None:
                self._start()

    def pending_jobs(self) -> int:
        with self._lock:
            return len(self._pending) + sum(1 for c in self._clocks.values() if c.final)

    # -- writing now ---------------------------------------------------------------------

    def write_now(
        self, job_id: str, mutate: Mutation, kind: str,
        tally: Callable[[], Tally] | None = None,
    ) -> Job | None:
        """Write pending progress of the job, then ``mutate``, retrying until ``sync_timeout``.

        Returns the new snapshot, or None when the rules changed nothing. When the
        database stays unreachable the write is queued behind the job's pending
        progress (never dropped, never ahead of it) and ``StoreUnavailable`` is raised
        so the caller can say it is not written yet.
        """
        deadline = time.monotonic() + self.sync_timeout
        attempt = 0
        while True:
            try:
                if not self._write_pending(job_id):
                    raise StoreUnavailable(self.store.url, "pending progress not written")
                job = self.store.update_job(job_id, mutate)
            except RETRYABLE as error:
                self._on_error(job_id, error)
                attempt += 1
                if time.monotonic() + _delay(attempt, self.max_backoff) > deadline:
                    self._queue_final(job_id, mutate, kind)
                    log.error("write queued: database unreachable", job_id=job_id, kind=kind,
                              error=brief(error))
                    raise StoreUnavailable(self.store.url, brief(error)) from error
                log.warning("write failed; retrying", job_id=job_id, kind=kind, attempt=attempt,
                            error=brief(error))
                time.sleep(_delay(attempt, self.max_backoff))
                continue
            self._on_written(job_id, job, kind, tally() if tally is not None else [])
            if job is not None and job.status.is_terminal:
                with self._lock:
                    self._drop_clock(job_id, ended=True)
            return job

    def flush(self, timeout: float | None = None) -> int:
        """Write everything pending now, in the caller; the number of jobs written.

        Jobs whose write still fails stay pending (and are retried by the thread).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        written = 0
        while True:
            with self._lock:
                jobs = list(self._pending)
                jobs += [j for j, c in self._clocks.items() if c.final and j not in jobs]
                if not jobs:
                    # Writes the thread has in flight count as pending until they land.
                    self._lock.wait_for(lambda: not self._busy, _remaining(deadline))
                    return written
            progress = [self._write_pending(job_id) for job_id in jobs]
            written += sum(progress)
            if not any(progress) or (deadline is not None and time.monotonic() > deadline):
                return written

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush and stop the background thread."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- internals -----------------------------------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="morag-jobs-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                due, wait = self._due()
                while not due and not self._closed:
                    self._lock.wait(wait)
                    due, wait = self._due()
                if self._closed and not due:
                    return
            for job_id in due:
                self._write_pending(job_id, only_if_due=True)

    def _due(self) -> tuple[list[str], float | None]:
        """Jobs whose write is due now, and how long until the next one is."""
        now = time.monotonic()
        due: list[str] = []
        wait: float | None = None
        candidates = set(self._pending) | {j for j, c in self._clocks.items() if c.final}
        for job_id in candidates:
            ready = self._ready_at(job_id)
            if ready <= now:
                due.append(job_id)
            else:
                wait = ready - now if wait is None else min(wait, ready - now)
        return due, wait

    def _ready_at(self, job_id: str) -> float:
        """When the job's next write is due (monotonic; under the lock)."""
        clock = self._clocks.get(job_id)
        if clock is None:
            return 0.0
        if job_id in self._urgent:
            return clock.retry_at
        return max(clock.last_write + self.interval, clock.retry_at)

    def _still_due(self, job_id: str) -> bool:
        clock = self._clocks.get(job_id)
        has_work = job_id in self._pending or (clock is not None and bool(clock.final))
        return has_work and self._ready_at(job_id) <= time.monotonic()

    def _write_pending(self, job_id: str, *, only_if_due: bool = False) -> bool:
        """Write the job's pending progress, then its queued completions; False on failure.

        ``only_if_due`` (the writer thread): the job was found due before the lock was let
        go; a flush may have written it since, and what came after must wait its interval.
        """
        with self._lock:
            # One write per job at a time, so a job's writes land in the order submitted.
            self._lock.wait_for(lambda: job_id not in self._busy, self.sync_timeout)
            if only_if_due and not self._still_due(job_id):
                return True
            pending = self._pending.pop(job_id, None)
            self._urgent.discard(job_id)
            clock = self._clocks.setdefault(job_id, _JobClock())
            clock.last_write = time.monotonic()
            finals = list(clock.final)
            self._busy.add(job_id)
        try:
            return self._write(job_id, pending, clock, finals)
        finally:
            with self._lock:
                self._busy.discard(job_id)
                self._lock.notify_all()

    def _write(
        self, job_id: str, pending: _Pending | None, clock: _JobClock,
        finals: list[tuple[Mutation, str]],
    ) -> bool:
        job: Job | None = None
        try:
            if pending is not None:
                job, verdicts = self._write_progress(job_id, pending)
                self._on_written(job_id, job, "progress", pending.tally(verdicts))
            for mutate, kind in finals:
                job = self.store.update_job(job_id, mutate)
                with self._lock:
                    clock.final.remove((mutate, kind))
                self._on_written(job_id, job, kind, [])
        except RETRYABLE as error:
            self._on_error(job_id, error)
            self._requeue(job_id, pending, clock, error)
            return False
        except JobNotFound:
            log.warning("progress for a job that does not exist; dropped", job_id=job_id)
            if pending is not None:
                self._on_written(job_id, None, "progress",
                                 [(e.source, "no_job", n) for e, n in
                                  zip(pending.events, pending.counts, strict=True)])
        with self._lock:
            clock.failures = 0
            clock.retry_at = 0.0
            self._drop_clock(job_id, ended=job is not None and job.status.is_terminal)
        return True

    def _drop_clock(self, job_id: str, *, ended: bool) -> None:
        """A job's clock ends with the job (nothing more will be coalesced for it); a
        running job's is kept for its interval, unless very many are running at once."""
        clock = self._clocks.get(job_id)
        if clock is not None and not clock.final and job_id not in self._pending and (
            ended or len(self._clocks) > 10_000
        ):
            del self._clocks[job_id]

    def _write_progress(
        self, job_id: str, pending: _Pending
    ) -> tuple[Job | None, list[rules.Verdict]]:
        """Write pending progress in one update; the snapshot and the rules' verdicts."""
        mutate, verdicts = rules.judged_chain(pending.events)
        try:
            job = self.store.update_job(job_id, mutate)
        except JobNotFound:
            if not pending.create:
                raise
            with contextlib.suppress(JobExists):  # another process created it first
                self._create_job(job_id)
            job = self.store.update_job(job_id, mutate)
        return job, verdicts

    def _requeue(
        self, job_id: str, pending: _Pending | None, clock: _JobClock, error: Exception
    ) -> None:
        with self._lock:
            if pending is not None:
                newer = self._pending.get(job_id)
                if newer is not None:
                    pending.absorb(newer)
                self._pending[job_id] = pending
            clock.failures += 1
            clock.retry_at = time.monotonic() + _delay(clock.failures, self.max_backoff)
        log.warning("job write failed; state kept in memory for a retry", job_id=job_id,
                    attempt=clock.failures, error=brief(error))

    def discard_final(self, job_id: str, mutate: Mutation) -> None:
        """Forget a queued write (the caller queued its event as progress instead)."""
        with self._lock:
            clock = self._clocks.get(job_id)
            if clock is not None:
                clock.final = [(m, k) for m, k in clock.final if m is not mutate]

    def _queue_final(self, job_id: str, mutate: Mutation, kind: str) -> None:
        with self._lock:
            self._clocks.setdefault(job_id, _JobClock()).final.append((mutate, kind))
            if self._thread is None:
                self._start()
            self._lock.notify()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _delay(attempt: int, ceiling: float) -> float:
    return float(min(0.05 * 2 ** min(attempt, 16), ceiling))


def _flush_at_exit(weak: weakref.ref[CoalescingWriter]) -> None:
    writer = weak()
    if writer is not None and writer.pending_jobs():
        writer.close(timeout=writer.sync_timeout)


def _reset_in_child(weak: weakref.ref[CoalescingWriter]) -> None:
    """A forked child starts empty: the parent writes what it had pending."""
    writer = weak()
    if writer is not None:
        writer._setup()
