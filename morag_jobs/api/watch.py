"""One poll of the job table for all open streams of a server process, however many.

Updates are written by other processes, so the streams learn of them by reading the
database. Read per stream, that cost a query per stream per interval, about 1 ms of the
server's CPU each (SQLAlchemy and the thread-pool hop, under the GIL the requests need
too): 200 streams that only waited took 46 % of a core, and 200 dashboards
(``/api/v1/stream``) under progress load cut PUT throughput to a tenth
(``bench/stream_bench.py``). Here one poll serves every stream:

- :class:`JobWatch` (``/jobs/{id}/stream``) reads the versions of every watched job in
  one query; for the jobs that changed it reads the row and the new history once,
  whatever their number of watchers, and formats the events once.
- :class:`JobFeed` (``/stream``) reads the jobs changed since the last poll once, for
  every key, and joins their events once for every job and per user.

A stream then only sends what it is handed, in one write per poll. Each poll runs as a
task on the server's event loop (its queries in the thread pool) while anyone listens,
and ends with the last listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final, Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from morag_jobs.api.schemas import job_json
from morag_jobs.errors import StoreUnavailable
from morag_jobs.events import utc_now
from morag_jobs.logs import get_logger
from morag_jobs.store import HistoryEntry, Job, JobStore
from morag_jobs.store.reads import JobMove, JobReads, Seen

__all__ = ["OVERLAP", "Batch", "Change", "JobFeed", "JobWatch", "SeenJobs", "feed_text",
           "history_text", "job_text", "sse"]

log = get_logger(__name__)

T = TypeVar("T")
OVERLAP: Final = timedelta(seconds=2)
"""The feed re-reads this far back: a write committed late is still seen."""
PAGE: Final = 500
_KEEP_SECONDS: Final = 60.0
_KEEP_ITEMS: Final = 20_000


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    """One Server-Sent Event; ``data`` as compact JSON on one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def job_text(job: Job) -> str:
    """The job stream's ``job`` event for this state of the job (its version is the id)."""
    return sse("job", job_json(job), str(job.version))


def history_text(record: HistoryEntry) -> str:
    return sse("history", record.to_dict())


class _Poller(Generic[T]):
    """Read in the thread pool every ``interval`` seconds while ``_wanted``; publish on the loop."""

    def __init__(self, store: JobStore, interval: float) -> None:
        self.store = store
        self.reads = JobReads(store)
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def _wanted(self) -> bool:
        raise NotImplementedError

    def _reader(self) -> Callable[[], T]:
        """What the next poll reads, taken on the loop; called in a thread."""
        raise NotImplementedError

    def _publish(self, result: T) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._wanted():
                await asyncio.sleep(self.interval)
                if not self._wanted():
                    break
                try:
                    result = await run_in_threadpool(self._reader())
                except StoreUnavailable as error:
                    # The streams keep their heartbeats and see the changes once it is back.
                    log.warning("stream poll failed; retrying", error=str(error)[:200])
                    continue
                except Exception:
                    # A bug here must not silence every stream of the process for good.
                    log.exception("stream poll failed; retrying")
                    continue
                self._publish(result)
        finally:
            self._task = None


def _wake(signal: asyncio.Event) -> asyncio.Event:
    """Wake everyone waiting on ``signal``; the fresh event to wait on next."""
    signal.set()
    return asyncio.Event()


async def _wait(signal: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await signal.wait()


# -- one job's stream ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """A watched job's new state, read once for all its watchers.

    ``history`` holds (event id, ``history`` event) for every event after ``after``; a
    watcher whose own cursor is behind ``after`` (it missed a change) reads its gap itself.
    """

    job: Job | None
    """None: the job was deleted."""
    text: str
    after: int
    history: tuple[tuple[int, str], ...] = ()


@dataclass(slots=True)
class _Watched:
    version: int | None
    cursor: int
    watchers: int = 1
    change: Change | None = None
    signal: asyncio.Event = field(default_factory=asyncio.Event)


class JobWatch(_Poller[dict[str, Change]]):
    """Which jobs open streams watch, polled together every ``interval`` seconds."""

    def __init__(self, store: JobStore, interval: float) -> None:
        super().__init__(store, interval)
        self._jobs: dict[str, _Watched] = {}

    def watch(self, job: Job, cursor: int) -> None:
        """Start watching ``job`` as seen (version and last history event id ``cursor``)."""
        watched = self._jobs.get(job.id)
        if watched is None:
            self._jobs[job.id] = _Watched(job.version, cursor)
        else:
            watched.watchers += 1
            if watched.version is None or job.version < watched.version:
                # This watcher saw an older state than the others: the next poll reads again.
                watched.version = job.version
                watched.cursor = min(watched.cursor, cursor)
        self._start()

    def unwatch(self, job_id: str) -> None:
        watched = self._jobs.get(job_id)
        if watched is not None:
            watched.watchers -= 1
            if watched.watchers <= 0:
                del self._jobs[job_id]

    async def changed(self, job_id: str, version: int, timeout: float) -> Change | None:
        """The job's state once it is newer than ``version``; None after ``timeout`` s."""
        watched = self._jobs[job_id]
        if not _newer(watched.change, version):
            await _wait(watched.signal, timeout)
        return watched.change if _newer(watched.change, version) else None

    def _wanted(self) -> bool:
        return bool(self._jobs)

    def _reader(self) -> Callable[[], dict[str, Change]]:
        known = {job_id: (w.version, w.cursor) for job_id, w in self._jobs.items()}
        return lambda: self._read(known)

    def _publish(self, result: dict[str, Change]) -> None:
        for job_id, change in result.items():
            watched = self._jobs.get(job_id)
            if watched is None:
                continue
            watched.version = change.job.version if change.job is not None else None
            if change.history:
                watched.cursor = change.history[-1][0]
            watched.change = change
            watched.signal = _wake(watched.signal)

    def _read(self, known: dict[str, Seen]) -> dict[str, Change]:
        """Every watched job whose version moved: its row, history and event texts."""
        return {job_id: _change(move, known[job_id][1])
                for job_id, move in self.reads.moved_jobs(known).items()}


def _change(move: JobMove, cursor: int) -> Change:
    job = move.job
    if job is None:
        return Change(None, "", cursor)
    return Change(job, job_text(job), cursor,
                  tuple((record.id, history_text(record)) for record in move.history))


def _newer(change: Change | None, version: int) -> bool:
    return change is not None and (change.job is None or change.job.version > version)


# -- every job's stream ----------------------------------------------------------------------


class SeenJobs:
    """The version of each job already sent, and the newest ``updated_at`` among them.

    A job is forgotten once its update is older than twice the overlap: the re-reads
    (``updated_after = cursor - OVERLAP``) never reach that far back.
    """

    def __init__(self, since: datetime) -> None:
        self.cursor = since
        self._jobs: dict[str, tuple[int, datetime]] = {}

    def fresh(self, job: Job) -> bool:
        """True (and remembered) when this version of the job was not sent before."""
        if self._jobs.get(job.id, (-1, self.cursor))[0] >= job.version:
            return False
        self._jobs[job.id] = (job.version, job.updated_at or self.cursor)
        return True

    def advance(self) -> None:
        self.cursor = max([self.cursor, *(at for _, at in self._jobs.values())])
        horizon = self.cursor - OVERLAP * 2
        for job_id in [key for key, (_, at) in self._jobs.items() if at < horizon]:
            del self._jobs[job_id]

    def read_changed(self, store: JobStore, user_id: str | None = None) -> list[Job]:
        """The jobs changed since the cursor (less the overlap) not sent yet; advances."""
        fresh, offset = [], 0
        while True:
            jobs = store.list_jobs(user_id=user_id, updated_after=self.cursor - OVERLAP,
                                   limit=PAGE, offset=offset, order_by="updated_at")
            fresh += [job for job in jobs if self.fresh(job)]
            offset += len(jobs)
            if len(jobs) < PAGE:
                break
        self.advance()
        return fresh


def feed_text(job: Job) -> str:
    """The all-jobs stream's ``job`` event, with ``<job id>:<version>`` as its id."""
    return sse("job", job_json(job), f"{job.id}:{job.version}")


@dataclass(frozen=True, slots=True)
class Batch:
    """What one poll found, its events joined in advance: for every job, and per user."""

    seq: int
    at: float
    size: int
    until: datetime
    """The feed's cursor after this poll: a listener that misses later batches reads from it."""
    everyone: str
    by_user: dict[str | None, str]

    def text_for(self, user_id: str | None) -> str:
        """The events a key sees: a user's (``user_id``), or every job's (None)."""
        return self.everyone if user_id is None else self.by_user.get(user_id, "")


class JobFeed(_Poller[Batch | None]):
    """Every job changed since the last poll, read once for all ``/stream`` listeners.

    The events of a poll are formatted and joined once, for every job and per user, so
    a listener's share of a poll is one dictionary look-up and one write, whatever the
    number of jobs that changed. The batches of the last minute are kept: a new listener
    starts with those of the last ``OVERLAP``; one that fell further behind (its client
    reads slowly) reads what it missed itself (:meth:`SeenJobs.read_changed`).
    """

    def __init__(self, store: JobStore, interval: float) -> None:
        super().__init__(store, interval)
        self._listeners = 0
        self._seen = SeenJobs(utc_now())
        self._batches: deque[Batch] = deque()
        self._kept = 0
        self._seq = 0
        self._signal = asyncio.Event()

    def listen(self) -> int:
        """Count a listener in; the position of its first batch (the last 2 s)."""
        self._listeners += 1
        if self._task is None:
            self._seen, self._batches, self._kept = SeenJobs(utc_now()), deque(), 0
            self._start()
        horizon = time.monotonic() - OVERLAP.total_seconds()
        return next((batch.seq for batch in self._batches if batch.at >= horizon), self._seq + 1)

    def leave(self) -> None:
        self._listeners -= 1

    async def batches(self, position: int, timeout: float) -> tuple[int, list[Batch] | None]:
        """The batches from ``position`` on, and the position after them.

        No batches after ``timeout`` seconds without one; None when some of them are no
        longer kept.
        """
        if position > self._seq:
            await _wait(self._signal, timeout)
        if position <= self._seq and (not self._batches or position < self._batches[0].seq):
            return self._seq + 1, None
        return self._seq + 1, [batch for batch in self._batches if batch.seq >= position]

    def _wanted(self) -> bool:
        return self._listeners > 0

    def _reader(self) -> Callable[[], Batch | None]:
        return self._read

    def _read(self) -> Batch | None:
        jobs = self._seen.read_changed(self.store)
        if not jobs:
            return None
        texts = [(job.user_id, feed_text(job)) for job in jobs]
        by_user: dict[str | None, list[str]] = {}
        for user_id, text in texts:
            by_user.setdefault(user_id, []).append(text)
        return Batch(0, 0.0, len(texts), self._seen.cursor, "".join(t for _, t in texts),
                     {user_id: "".join(mine) for user_id, mine in by_user.items()})

    def _publish(self, result: Batch | None) -> None:
        if result is None:
            return
        self._seq += 1
        now = time.monotonic()
        self._batches.append(replace(result, seq=self._seq, at=now))
        self._kept += result.size
        while self._batches and (self._batches[0].at < now - _KEEP_SECONDS
                                 or self._kept > _KEEP_ITEMS):
            self._kept -= self._batches.popleft().size
        self._signal = _wake(self._signal)
