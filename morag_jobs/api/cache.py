"""``RefreshingCache``: rows the hot path reads, fresh for ``ttl``, refreshed in batches.

A progress report must not cost a query for its key and its job: the checks read a
snapshot at most ``ttl`` seconds old. While entries are in use, one background thread
re-reads all of them every ``ttl / 2`` seconds with one query per batch (``load_many``),
so 200 busy workers cost two queries a refresh, not 400 a second. An entry unused for
a refresh cycle ages out; the next request reads it again (``get``, which reads all the
keys missed at the same moment in one query). The thread stops when nothing has been
used for a while and starts again on demand.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from morag_jobs.errors import StoreUnavailable
from morag_jobs.logs import get_logger

__all__ = ["MISS", "RefreshingCache"]

log = get_logger(__name__)

K = TypeVar("K")
V = TypeVar("V")
MISS: Final = object()
"""What ``peek`` returns when the cache holds no fresh entry (None means "no such row")."""
_BATCH = 500
_IDLE_STOP = 30.0
_LIMIT = 100_000


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V | None
    fetched: float
    used: bool = True


class RefreshingCache(Generic[K, V]):
    """``key -> value or None`` read through ``load_many``; see the module docstring."""

    def __init__(
        self, load_many: Callable[[list[K]], dict[K, V]], *, ttl: float, name: str,
        on_refresh: Callable[[list[K]], None] | None = None,
        merge: Callable[[V | None, V | None], V | None] | None = None,
    ) -> None:
        self.load_many = load_many
        self.merge = merge
        self.ttl = ttl
        self.name = name
        self.on_refresh = on_refresh
        self._entries: dict[K, _Entry[V]] = {}
        self._waiting: dict[K, asyncio.Future[V | None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_use = time.monotonic()

    def peek(self, key: K) -> V | object | None:
        """The fresh value (None: no such row), or ``MISS``; never blocks."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry.fetched > self.ttl:
            return MISS
        entry.used = True
        self._last_use = time.monotonic()
        return entry.value

    async def get(self, key: K) -> V | None:
        """The value, fresh: from the cache, else read with every key missed meanwhile.

        Misses in the same turn of the event loop share one ``load_many`` query (run in
        the thread pool), so a cold start of 200 busy workers costs one query, not 200.
        """
        value = self.peek(key)
        if value is not MISS:
            return value  # type: ignore[return-value]
        future = self._waiting.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[key] = future
            if len(self._waiting) == 1:
                asyncio.get_running_loop().create_task(self._load_waiting())
        # Shielded: a caller that goes away must not cancel the others' read.
        return await asyncio.shield(future)

    async def _load_waiting(self) -> None:
        await asyncio.sleep(0)
        waiting, self._waiting = self._waiting, {}
        try:
            values = await run_in_threadpool(self.load_many, list(waiting))
        except Exception as error:  # handed to every waiter, as its own read would raise it
            for future in waiting.values():
                if not future.done():
                    future.set_exception(error)
            return
        for key, future in waiting.items():
            self.put(key, values.get(key))
            if not future.done():
                future.set_result(values.get(key))

    def load(self, key: K) -> V | None:
        """Read one key now (blocking), cache it, and keep it refreshed while used."""
        value = self.load_many([key]).get(key)
        self.put(key, value)
        return value

    def put(self, key: K, value: V | None) -> None:
        if len(self._entries) >= _LIMIT:
            self._entries.clear()
        self._entries[key] = _Entry(value, time.monotonic())
        self._last_use = time.monotonic()
        self._ensure_thread()

    def update(self, key: K, value: V) -> None:
        """Replace a cached value (e.g. a row this process just wrote); no-op if uncached."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.value = self._merged(entry.value, value)

    def _merged(self, old: V | None, new: V | None) -> V | None:
        return new if self.merge is None else self.merge(old, new)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    # -- the refresher -------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name=f"morag-jobs-{self.name}-cache", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 2):
            if time.monotonic() - self._last_use > _IDLE_STOP:
                return
            self.refresh()

    def refresh(self) -> None:
        """Re-read every entry used since the last refresh; forget the others once stale."""
        now = time.monotonic()
        used: list[K] = []
        for key, entry in list(self._entries.items()):
            if entry.used:
                entry.used = False
                used.append(key)
            elif now - entry.fetched > self.ttl:
                self._entries.pop(key, None)
        for batch in _batches(used):
            try:
                values = self.load_many(batch)
                if self.on_refresh is not None:
                    self.on_refresh(batch)
            except StoreUnavailable as error:
                log.warning("cache refresh failed; entries age out", cache=self.name,
                            error=str(error).splitlines()[0] if str(error) else repr(error))
                return
            fetched = time.monotonic()
            for key in batch:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.value = self._merged(entry.value, values.get(key))
                    entry.fetched = fetched


def _batches(keys: list[K]) -> Iterable[list[K]]:
    for start in range(0, len(keys), _BATCH):
        yield keys[start:start + _BATCH]
