"""How long a running job still needs: from its recent progress, and from how long the
stages of finished jobs of its type took.

``estimate_remaining`` goes by the recent rate alone. ``blend_remaining`` starts from the
typical stage durations of finished jobs of the same ``job_type`` (the prior, read by
``morag_jobs.store.durations``) and trusts the live rate more as the current stage
proceeds. ``EtaEstimator`` does both for a store, reading each type's prior at most once
a minute; the API (``eta_seconds``), ``morag-jobs status`` and the dashboard show its answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, NamedTuple

from morag_jobs.events import utc_now
from morag_jobs.logs import get_logger
from morag_jobs.store import HistoryEntry, Job, JobStatus, JobStore
from morag_jobs.store.durations import (
    DEFAULT_LIMIT,
    job_duration,
    recent_progress,
    stage_durations,
)

__all__ = [
    "WHOLE_JOB",
    "EtaEstimator",
    "blend_remaining",
    "describe_remaining",
    "estimate_remaining",
]

log = get_logger(__name__)

WHOLE_JOB: Final = "*"
"""The key of the prior of a job without a stage plan: the whole job is its one stage."""
_MAX_CACHED_TYPES: Final = 1024
"""Job types whose prior is kept at once (types come from users: the cache is bounded)."""


def _rate(events: Sequence[HistoryEntry], window: int) -> tuple[float, datetime] | None:
    """Percent per second over the last ``window`` progress events, and the last one's time."""
    points = [(e.at, e.percentage) for e in events
              if e.kind == "progress" and e.percentage is not None][-window:]
    if len(points) < 2:
        return None
    (first_at, first_pct), (last_at, last_pct) = points[0], points[-1]
    seconds = (last_at - first_at).total_seconds()
    if seconds <= 0 or last_pct <= first_pct:
        return None
    return (last_pct - first_pct) / seconds, last_at


def estimate_remaining(
    events: Sequence[HistoryEntry], percentage: float, *, now: datetime, window: int = 20
) -> timedelta | None:
    """The time left at the recent rate of progress; None when there is no rate to go by.

    Uses the last ``window`` progress events, so a job that sped up or slowed down is
    judged by how it goes now rather than since it started.
    """
    live = _rate(events, window)
    if live is None or percentage >= 100.0:
        return None
    rate, last_at = live
    remaining = (100.0 - percentage) / rate - (now - last_at).total_seconds()
    return timedelta(seconds=max(remaining, 0.0))


class _Place(NamedTuple):
    """Where a job stands against its prior."""

    fraction: float
    """How far through its current stage it is, 0..1."""
    end: float
    """The overall percentage at which the current stage ends."""
    stage_seconds: float
    """The current stage's typical duration."""
    later_seconds: float
    """The typical durations of the stages after it, summed."""


def _place(job: Job, prior: Mapping[str, float]) -> _Place | None:
    """The job against its prior; None when the prior does not know its current stage."""
    plan = job.stages
    if plan is None:
        whole = prior.get(WHOLE_JOB)
        if whole is None:
            return None
        return _Place(_clamp(job.percentage / 100.0), 100.0, whole, 0.0)
    stage = job.stage if job.stage is not None else plan.first  # no progress yet
    if stage not in plan or stage not in prior:
        return None
    start, end = plan.band(stage)
    if job.stage == stage and job.stage_percent is not None:
        fraction = job.stage_percent / 100.0
    else:
        fraction = (job.percentage - start) / (end - start)
    names = plan.names
    later = sum(prior.get(name, 0.0) for name in names[names.index(stage) + 1:])
    return _Place(_clamp(fraction), end, prior[stage], later)


def _clamp(fraction: float) -> float:
    return min(max(fraction, 0.0), 1.0)


def blend_remaining(
    job: Job, events: Sequence[HistoryEntry], prior: Mapping[str, float], *,
    now: datetime, window: int = 20,
) -> timedelta | None:
    """The time left, from the prior of the job's type blended with its live rate.

    ``prior`` maps each stage of the job's plan (``job.stages``) to its typical seconds
    (``store.durations.stage_durations``); a job without a plan is one stage, whose
    typical duration is under ``WHOLE_JOB``. With ``f`` the fraction of its current stage
    done (``stage_percent / 100``, else read from ``percentage`` and the stage's band),
    ``D`` that stage's typical duration and ``L`` the stage's remaining band
    (``end - percentage``) at the live rate ``r`` (percent per second over the last
    ``window`` progress events):

    - the stage's prior remainder is ``P = (1 - f) * D``: 10 % into a stage that usually
      takes 60 s leaves 54 s;
    - the stage's remainder is ``S = (1 - w) * P + w * L / r`` with ``w = f``: the prior
      counts most as the stage begins, the live rate as it nears its end;
    - the time since the last progress event is taken off ``S`` (not below 0): the job has
      moved on since, though not past its stage without saying so;
    - the stages after it add their typical durations (a stage the prior lacks adds 0:
      finished jobs that skipped it booked its time to the stage before).

    The estimate is ``max(S - lag, 0) + sum(D_later)``; at a stage's end both ``P`` and
    ``L`` reach 0, so it does not jump when the next stage begins. Fallbacks: no live rate
    (fewer than two progress events, no progress between them) -> ``w = 0`` (the prior
    alone, the lag taken from ``job.last_progress_at``, else ``started_at``); no prior for
    the current stage (a new type, a new stage, ``prior`` empty) -> ``estimate_remaining``
    (the live rate alone); neither, or the job at 100 % -> None.
    """
    if job.percentage >= 100.0:
        return None
    place = _place(job, prior)
    if place is None:
        return estimate_remaining(events, job.percentage, now=now, window=window)
    stage_prior = (1.0 - place.fraction) * place.stage_seconds
    live = _rate(events, window)
    if live is None:
        stage_left = stage_prior
        last_at = job.last_progress_at or job.started_at
    else:
        rate, last_at = live
        stage_live = max(place.end - job.percentage, 0.0) / rate
        weight = place.fraction
        stage_left = (1.0 - weight) * stage_prior + weight * stage_live
    lag = max((now - last_at).total_seconds(), 0.0) if last_at is not None else 0.0
    return timedelta(seconds=max(stage_left - lag, 0.0) + place.later_seconds)


class EtaEstimator:
    """ETAs of a store's jobs: ``blend_remaining`` with the prior of each job type read
    from the history (``store.durations``) at most once per ``ttl`` seconds.

    The prior is the median over the last ``limit`` FINISHED jobs of the type; a job
    without a type has none (its ETA is the live rate's). Only PROCESSING jobs have an ETA.
    Safe to share between threads.
    """

    def __init__(
        self, store: JobStore, *, ttl: float = 60.0, limit: int = DEFAULT_LIMIT,
        window: int = 20, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.limit = limit
        self.window = window
        self._clock = clock
        self._cache: dict[tuple[str, bool], tuple[float, Mapping[str, float]]] = {}
        self._lock = threading.Lock()

    def prior(self, job: Job) -> Mapping[str, float]:
        """Typical seconds per stage for jobs like ``job`` (``WHOLE_JOB`` without a plan)."""
        if job.job_type is None:
            return {}
        key = (job.job_type, job.stages is not None)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > self._clock():
                return cached[1]
        durations: Mapping[str, float]
        if job.stages is not None:
            durations = stage_durations(self.store, job.job_type, limit=self.limit)
        else:
            whole = job_duration(self.store, job.job_type, limit=self.limit)
            durations = {WHOLE_JOB: whole} if whole is not None else {}
        log.debug("typical durations read", job_type=job.job_type, stages=len(durations))
        with self._lock:
            if len(self._cache) >= _MAX_CACHED_TYPES:
                self._cache.clear()
            self._cache[key] = (self._clock() + self.ttl, durations)
        return durations

    def remaining(self, job: Job, *, now: datetime | None = None) -> timedelta | None:
        """The time ``job`` still needs; None when it is not running or nothing tells."""
        return self.remaining_many([job], now=now)[job.id]

    def remaining_many(
        self, jobs: Iterable[Job], *, now: datetime | None = None
    ) -> dict[str, timedelta | None]:
        """Each job's id to its ETA, its recent history read in one query for all of them."""
        jobs = list(jobs)
        found: dict[str, timedelta | None] = dict.fromkeys(job.id for job in jobs)
        running = [job for job in jobs if job.status is JobStatus.PROCESSING]
        if not running:
            return found
        now = now if now is not None else utc_now()
        history = recent_progress(self.store, [job.id for job in running], window=self.window)
        for job in running:
            found[job.id] = blend_remaining(job, history.get(job.id, []), self.prior(job),
                                            now=now, window=self.window)
        return found


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
