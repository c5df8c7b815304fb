"""How long a running job still needs, estimated from its recent progress history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from morag_jobs.store import HistoryEntry

__all__ = ["estimate_remaining"]


def estimate_remaining(
    events: Sequence[HistoryEntry], percentage: float, *, now: datetime, window: int = 20
) -> timedelta | None:
    """The time left at the recent rate of progress; None when there is no rate to go by.

    Uses the last ``window`` progress events, so a job that sped up or slowed down is
    judged by how it goes now rather than since it started.
    """
    points = [(e.at, e.percentage) for e in events
              if e.kind == "progress" and e.percentage is not None][-window:]
    if len(points) < 2 or percentage >= 100.0:
        return None
    (first_at, first_pct), (last_at, last_pct) = points[0], points[-1]
    seconds = (last_at - first_at).total_seconds()
    if seconds <= 0 or last_pct <= first_pct:
        return None
    rate = (last_pct - first_pct) / seconds  # percent per second
    remaining = (100.0 - percentage) / rate - (now - last_at).total_seconds()
    return timedelta(seconds=max(remaining, 0.0))
