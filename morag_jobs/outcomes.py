"""What became of events: ``ApplyResult`` for one, ``HandlerStats`` for all of a handler's.

Kept apart from the handler so that code reading outcomes (metrics, the CLI's summaries,
tests) need not read the handler's machinery to find them.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from morag_jobs.store import Job

__all__ = ["ApplyResult", "HandlerStats"]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What became of one event: ``accepted`` and, either way, why."""

    accepted: bool
    reason: str
    job_id: str | None = None
    job: Job | None = None

    def __bool__(self) -> bool:
        return self.accepted


@dataclass(slots=True)
class HandlerStats:
    """Counters of events by (source, outcome), and of writes; ``outcomes`` sums sources.

    Outcomes: ``queued`` when accepted for a coalesced write, then ``applied``,
    ``stale``, ``stage_behind`` or ``terminal`` once written; ``rejected`` (invalid),
    ``no_job``.
    """

    by_source: Counter[tuple[str, str]] = field(default_factory=Counter)
    writes: int = 0
    write_errors: int = 0
    listener_errors: int = 0
    future_timestamps: int = 0
    """Events stamped ahead of this machine's clock, taken as arriving when they did."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, source: str, outcome: str, n: int = 1) -> None:
        # Callers and the writer thread both count: without the lock a += can be lost.
        with self._lock:
            self.by_source[source, outcome] += n

    @property
    def outcomes(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (_, outcome), n in self.by_source.items():
            totals[outcome] += n
        return totals

    def to_dict(self) -> dict[str, object]:
        return {
            **dict(self.outcomes),
            "writes": self.writes,
            "write_errors": self.write_errors,
            "listener_errors": self.listener_errors,
        }
