"""How long a running job still needs, estimated from its recent progress history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from morag_jobs.store import HistoryEntry

__all__ = ["describe_remaining", "estimate_remaining"]


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


def describe_remaining(remaining: timedelta) -> str:
    """An estimate of time left as a person reads it, precise where that means something.

    Under ten minutes it keeps the seconds (``~1 min 35 s``, where ``~1 min`` would hide a
    third of the wait); under an hour it rounds to the minute; then hours and minutes,
    then days and hours.
    """
    seconds = round(remaining.total_seconds())
    if seconds < 1:
        return "any moment"
    if seconds < 60:
        return f"~{seconds} s"
    if seconds < 600:
        minutes, rest = divmod(seconds, 60)
        return f"~{minutes} min {rest} s" if rest else f"~{minutes} min"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"~{hours} h {minutes} min" if minutes else f"~{hours} h"
    days, hours = divmod(hours, 24)
    return f"~{days} d {hours} h" if hours else f"~{days} d"
