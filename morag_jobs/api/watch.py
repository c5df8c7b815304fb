"""One poll of the database per server process, fanned out in memory to every open stream.

Updates are written by other processes (Celery workers, other server processes), so the
streams learn of them from the database. A :class:`StreamWatcher` (one per app, started
and stopped with it) reads, every ``stream_poll_interval`` seconds while any stream is
open (and for ``IDLE_SECONDS`` after the last one closes, so a reconnecting client finds
it running), on one connection:

- the jobs updated since its cursor, less ``OVERLAP`` so a write committed late is still
  seen (a job version already passed on is not passed on again);
- the history rows after the newest id it has read, and the ids it passed over (taken
  by a transaction that had not committed yet; asked for again for ``GAP_SECONDS``);
- every ``CHECK_SECONDS``, which of the jobs that job streams follow still exist.

Each event is formatted once; the all-jobs events of a poll are joined once for every
job and once per user. Each open stream then gets what its key may read, from an index
(job id, user id, or every job for admin keys): a stream costs a place in that index and
an inbox, not a query. A stream whose client reads too slowly for its inbox
(``INBOX_CHARS``) reads what it missed from the database itself, once.

Event ids, for ``Last-Event-ID``: a ``history`` event's id is its ``job_events.id``
and a job stream's ``job`` event carries the id of the last ``history`` row sent before
it; the all-jobs stream's ``job`` events carry a :class:`FeedCursor`
(``<updated_at in epoch microseconds>-<job id>``) that never goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from starlette.concurrency import run_in_threadpool

from morag_jobs.api.schemas import job_json
from morag_jobs.errors import StoreUnavailable
from morag_jobs.events import utc_now
from morag_jobs.logs import get_logger
from morag_jobs.store import HistoryEntry, Job, JobStore
from morag_jobs.store.reads import HISTORY_BASELINE, Changes, JobReads

__all__ = ["CHECK_SECONDS", "GAP_SECONDS", "IDLE_SECONDS", "INBOX_CHARS", "OVERLAP", "Batch",
           "FeedCursor", "Follower", "JobUpdate", "SeenJobs", "StreamWatcher", "feed_texts",
           "history_text", "job_body", "sse"]

log = get_logger(__name__)

OVERLAP: Final = timedelta(seconds=2)
"""The poll re-reads this far back: a write committed late is still seen."""
IDLE_SECONDS: Final = 10.0
GAP_SECONDS: Final = 30.0
MAX_GAPS: Final = 500
CHECK_SECONDS: Final = 5.0
INBOX_CHARS: Final = 4_000_000
"""What a stream may have waiting (characters of events) before it reads from the database."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_CURSOR: Final = re.compile(r"(\d{1,19})-([^\x00-\x1f\x7f]*)")
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f]")


def sse(event: str, data: Any, event_id: str | int | None = None) -> str:
    """One Server-Sent Event; ``data`` as compact JSON on one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def job_body(job: Job) -> str:
    """The job stream's ``job`` event without its id (the stream puts its cursor first)."""
    return sse("job", job_json(job))


def history_text(record: HistoryEntry) -> str:
    """A ``history`` event; its id is the row's ``job_events.id``."""
    return sse("history", record.to_dict(), record.id)


# -- the all-jobs stream's position ------------------------------------------------------------


@dataclass(frozen=True, order=True, slots=True)
class FeedCursor:
    """A position in the all-jobs stream: every change up to this (``updated_at``, job id)."""

    micros: int
    job_id: str = ""

    @classmethod
    def of(cls, job: Job, floor: datetime) -> FeedCursor:
        at = job.updated_at or floor
        return cls((at - _EPOCH) // _MICROSECOND, _UNSAFE.sub("", job.id))

    @classmethod
    def parse(cls, text: str) -> FeedCursor | None:
        """The cursor an event id spells, or None for anything else."""
        match = _CURSOR.fullmatch(text.strip())
        return cls(int(match[1]), match[2]) if match else None

    @property
    def at(self) -> datetime:
        return _EPOCH + self.micros * _MICROSECOND

    def __str__(self) -> str:
        return f"{self.micros}-{self.job_id}"


def feed_texts(jobs: Iterable[Job], cursor: FeedCursor | None, floor: datetime
               ) -> tuple[list[tuple[str | None, str]], FeedCursor | None]:
    """The all-jobs ``job`` events of ``jobs`` (in update order), each with the cursor so
    far as its id (never below ``cursor``): (the job's user, event) pairs and the cursor."""
    texts = []
    for job in jobs:
        here = FeedCursor.of(job, floor)
        cursor = here if cursor is None or here > cursor else cursor
        texts.append((job.user_id, sse("job", job_json(job), str(cursor))))
    return texts, cursor


class SeenJobs:
    """The version of each job already passed on, and the newest ``updated_at`` among them
    (the cursor).

    A job is forgotten once its update is older than twice the overlap: the re-reads
    (``updated_after = cursor - OVERLAP``) never reach that far back.
    """

    def __init__(self, since: datetime) -> None:
        self.cursor = since
        self.versions: dict[str, int] = {}
        self._at: dict[str, datetime] = {}

    def fresh(self, job: Job) -> bool:
        """True (and remembered) when this version of the job was not passed on before."""
        if self.versions.get(job.id, -1) >= job.version:
            return False
        self.versions[job.id] = job.version
        self._at[job.id] = job.updated_at or self.cursor
        return True

    def advance(self) -> None:
        """Move the cursor to the newest update seen, but not past this server's clock: a
        writer whose clock runs ahead must not hide the others' updates."""
        if self._at:
            self.cursor = max(self.cursor, min(max(self._at.values()), utc_now()))
        horizon = self.cursor - OVERLAP * 2
        for job_id in [key for key, at in self._at.items() if at < horizon]:
            del self._at[job_id], self.versions[job_id]


# -- what one poll found ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """A followed job's news in one poll, formatted once for all the streams on it."""

    job: Job | None
    """Its new state (None: only new history this time, or deleted)."""
    body: str = ""
    """``job_body(job)``."""
    history: tuple[tuple[int, str], ...] = ()
    """(id, ``history`` event) of its new history rows, oldest first."""
    deleted: bool = False

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(text) for _, text in self.history)


@dataclass(frozen=True, slots=True)
class Batch:
    """What one poll found: per followed job, and the all-jobs events joined per reader."""

    jobs: dict[str, JobUpdate]
    everyone: str
    by_user: dict[str, str]
    cursor: FeedCursor | None
    """The all-jobs stream's position after this poll."""
    at: float = 0.0


class Follower:
    """An open stream's place at the watcher: its key and its inbox.

    ``key`` is a job id (a job stream), a user id, or None (an all-jobs stream of a
    user key, or of an admin key: every job). Only the event loop touches it.
    """

    __slots__ = ("_signal", "chars", "inbox", "job", "key", "overflowed")

    def __init__(self, key: str | None, *, job: bool) -> None:
        self.key = key
        self.job = job
        self.inbox: deque[Any] = deque()
        self.chars = 0
        self.overflowed = False
        self._signal = asyncio.Event()

    def put(self, item: Any, chars: int) -> None:
        if self.overflowed:
            return
        if self.chars + chars > INBOX_CHARS:  # its client reads too slowly: drop, catch up later
            self.inbox.clear()
            self.chars, self.overflowed = 0, True
        else:
            self.inbox.append(item)
            self.chars += chars
        self._signal.set()

    async def wait(self, timeout: float) -> bool:
        """True once something (or an overflow) waits; False after ``timeout`` seconds."""
        if not self.inbox and not self.overflowed:
            await _wait(self._signal, timeout)
        return bool(self.inbox) or self.overflowed

    def take(self) -> tuple[list[Any], bool]:
        """What waits, and whether some was dropped (the stream reads it from the database)."""
        items, overflowed = list(self.inbox), self.overflowed
        self.inbox.clear()
        self.chars, self.overflowed = 0, False
        self._signal.clear()
        return items, overflowed


async def _wait(signal: asyncio.Event, timeout: float | None) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await signal.wait()
    return signal.is_set()


def _wake(signal: asyncio.Event) -> asyncio.Event:
    """Wake everyone waiting on ``signal``; the fresh event to wait on next."""
    signal.set()
    return asyncio.Event()


# -- the watcher ---------------------------------------------------------------------------------


class StreamWatcher:
    """The one poll of a server process, and the streams it serves.

    ``start``/``stop`` run its task with the app (``create_app``'s lifespan). Streams
    ``follow_job``/``follow_feed`` and ``leave``; a job stream awaits ``settled`` before
    reading its start from the database, so no row falls between that read and the polls.
    """

    def __init__(self, store: JobStore, interval: float) -> None:
        self.store = store
        self.reads = JobReads(store)
        self.interval = interval
        self.polls = 0
        """Polls made (each one connection and two or three statements)."""
        self._jobs: dict[str, set[Follower]] = {}
        self._feeds: dict[str | None, set[Follower]] = {}
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._started = self._done = 0
        self._left_at = self._next_at = 0.0
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        """Forget the cursors: the next poll starts afresh (after an idle spell)."""
        self._seen = SeenJobs(utc_now())
        self._cursor: FeedCursor | None = None
        self._history_after: int | None = None
        self._gaps: dict[int, float] = {}
        self._recent: deque[Batch] = deque()
        self._checked_at = 0.0

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the poll on the running event loop (it polls only while streams are open)."""
        self._closed = False
        self._ensure()

    def _ensure(self) -> None:
        """The task, if not stopped: an app run without its lifespan starts it here."""
        if self._task is None and not self._closed:
            self._kick, self._progress = asyncio.Event(), asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream watcher")

    async def stop(self) -> None:
        """Stop polling (the app shuts down): streams still open only send heartbeats."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def followers(self) -> int:
        """Streams following now."""
        return sum(map(len, self._jobs.values())) + sum(map(len, self._feeds.values()))

    # -- streams -----------------------------------------------------------------------------

    def follow_job(self, job_id: str) -> Follower:
        follower = Follower(job_id, job=True)
        self._jobs.setdefault(job_id, set()).add(follower)
        self._wanted()
        return follower

    def follow_feed(self, user_id: str | None, *, recent: bool) -> Follower:
        """An all-jobs stream (a user's jobs, or every job for None); ``recent`` first
        hands it the changes of the last ``OVERLAP`` the watcher has already read."""
        follower = Follower(user_id, job=False)
        self._feeds.setdefault(user_id, set()).add(follower)
        if recent:
            horizon = time.monotonic() - OVERLAP.total_seconds()
            for batch in self._recent:
                if batch.at >= horizon:
                    self._hand(follower, batch)
        self._wanted()
        return follower

    def leave(self, follower: Follower) -> None:
        index = self._jobs if follower.job else self._feeds
        mine = index.get(follower.key)
        if mine is not None:
            mine.discard(follower)
            if not mine:
                del index[follower.key]
        self._left_at = time.monotonic()

    async def settled(self, timeout: float) -> bool:
        """True once every poll begun before now has ended and the watcher has its history
        cursor: each later poll includes the streams following now. False after ``timeout``."""
        self._ensure()
        if self._task is None:  # stopped
            await asyncio.sleep(timeout)
            return False
        target = self._started
        deadline = time.monotonic() + timeout
        while self._done < target or self._history_after is None:
            remaining = deadline - time.monotonic()
            assert self._progress is not None
            if remaining <= 0 or not await _wait(self._progress, remaining):
                return self._done >= target and self._history_after is not None
        return True

    def _wanted(self) -> None:
        self._ensure()
        if self._kick is not None:
            self._kick.set()

    # -- the poll ------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._kick is not None
        while True:
            idle = time.monotonic() - self._left_at
            if not self._jobs and not self._feeds and (
                    self._history_after is None or idle >= IDLE_SECONDS):
                self._reset()
                self._kick.clear()
                await self._kick.wait()
                continue
            if self._history_after is not None:  # a first poll (a stream waits) goes at once
                await asyncio.sleep(max(0.0, self._next_at - time.monotonic()))
            self._next_at = time.monotonic() + self.interval  # every interval, however long
            if not await self._poll():
                await asyncio.sleep(self.interval)

    async def _poll(self) -> bool:
        followed = frozenset(self._jobs)
        now = time.monotonic()
        check = followed if followed and now - self._checked_at >= CHECK_SECONDS else frozenset()
        self._started += 1
        try:
            batch = await run_in_threadpool(self._read, followed, check)
        except StoreUnavailable as error:
            # The streams keep their heartbeats and see the changes once it is back.
            log.warning("stream poll failed; retrying", error=str(error)[:200])
            return False
        except Exception:
            # A bug here must not silence every stream of the process for good.
            log.exception("stream poll failed; retrying")
            return False
        finally:
            self._done += 1
            assert self._progress is not None
            self._progress = _wake(self._progress)
        if check:
            self._checked_at = now
        self._publish(batch)
        return True

    def _read(self, followed: frozenset[str], check: frozenset[str]) -> Batch:
        """One poll's read and formatting, in a worker thread (only polls touch the cursors)."""
        changes = self.reads.changes(self._seen.cursor - OVERLAP, self._history_after,
                                     list(self._gaps), seen=self._seen.versions,
                                     rows=bool(followed), check=check)
        self.polls += 1
        self._advance_history(changes.history_ids)
        fresh = [job for job in changes.jobs if self._seen.fresh(job)]
        self._seen.advance()
        texts, self._cursor = feed_texts(fresh, self._cursor, self._seen.cursor)
        by_user: dict[str, list[str]] = {}
        for user_id, text in texts:
            if user_id is not None:
                by_user.setdefault(user_id, []).append(text)
        return Batch(_job_updates(changes, fresh, followed), "".join(text for _, text in texts),
                     {user: "".join(mine) for user, mine in by_user.items()}, self._cursor)

    def _advance_history(self, ids: tuple[int, ...]) -> None:
        """Move the history cursor past ``ids``; the ids skipped on the way are gaps."""
        now = time.monotonic()
        for found in ids:
            self._gaps.pop(found, None)
        if ids:
            newest = ids[-1]
            if self._history_after is None:
                start = max(0, newest - HISTORY_BASELINE)
            else:
                start = self._history_after
            if newest > start:
                got = set(ids)
                missing = [i for i in range(max(start + 1, newest - MAX_GAPS), newest)
                           if i not in got]
                self._gaps.update(dict.fromkeys(missing, now))
            self._history_after = max(newest, self._history_after or 0)
        elif self._history_after is None:
            self._history_after = 0
        expired = [i for i, at in self._gaps.items() if now - at > GAP_SECONDS]
        for gap in expired:
            del self._gaps[gap]
        while len(self._gaps) > MAX_GAPS:
            del self._gaps[min(self._gaps)]

    def _publish(self, batch: Batch) -> None:
        now = time.monotonic()
        stamped = Batch(batch.jobs, batch.everyone, batch.by_user, batch.cursor, now)
        if batch.everyone:
            self._recent.append(stamped)
        while self._recent and self._recent[0].at < now - OVERLAP.total_seconds():
            self._recent.popleft()
        if batch.everyone:
            for follower in self._feeds.get(None, ()):
                follower.put((batch.everyone, batch.cursor), len(batch.everyone))
            for user_id, text in batch.by_user.items():
                for follower in self._feeds.get(user_id, ()):
                    follower.put((text, batch.cursor), len(text))
        for job_id, update in batch.jobs.items():
            for follower in self._jobs.get(job_id, ()):
                follower.put(update, update.size)

    def _hand(self, follower: Follower, batch: Batch) -> None:
        text = batch.everyone if follower.key is None else batch.by_user.get(follower.key, "")
        if text:
            follower.put((text, batch.cursor), len(text))


def _job_updates(changes: Changes, fresh: list[Job], followed: frozenset[str]
                 ) -> dict[str, JobUpdate]:
    """The news of each followed job: its new state, its new history rows, or its end."""
    history: dict[str, list[tuple[int, str]]] = {}
    for record in changes.history:
        if record.job_id in followed:
            history.setdefault(record.job_id, []).append((record.id, history_text(record)))
    updates = {job.id: JobUpdate(job, job_body(job), tuple(history.pop(job.id, ())))
               for job in fresh if job.id in followed}
    updates.update((job_id, JobUpdate(None, "", tuple(rows))) for job_id, rows in history.items())
    if changes.existing is not None:
        for job_id in followed - changes.existing:
            if job_id not in updates:
                updates[job_id] = JobUpdate(None, deleted=True)
    return updates
