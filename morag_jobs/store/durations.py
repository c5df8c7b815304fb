"""How long jobs of a type usually take, read from the history: the ETA's prior.

``morag_jobs.eta`` blends what finished jobs of the same ``job_type`` took with the live
rate of a running one; this module reads the first half, plus a batch of running jobs'
recent progress, in a few bounded queries (never the whole history):

- ``stage_durations``: the median seconds of each stage over the last ``limit`` FINISHED
  jobs of a type. A stage's duration in one job is the time from the job's first history
  row in that stage to the first row of the stage after it (or, for its last stage, to
  the job's completion row). The SQL reads one ``MIN(at)`` per (job, stage) of those
  ``limit`` jobs only; the stitching and the medians are done here, over at most
  ``limit`` x stages rows.
- ``job_duration``: the median ``finished_at - started_at`` of the same jobs, for jobs
  without a stage plan (the whole job as one stage).
- ``recent_progress``: the last ``window`` progress rows of each of many jobs, in one query.

A retried job's stages are timed from their first attempt; the median keeps the few such
outliers from mattering. History is trimmed from the oldest rows (``history_limit``): a job
whose history no longer reaches back to its start has lost the beginning of its first
stage still shown, so that stage is left out for that job.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Connection, case, func, select, type_coerce

from morag_jobs.store import queries as q
from morag_jobs.store.jobs import JobStore
from morag_jobs.store.models import UTCDateTime
from morag_jobs.store.records import EVENT_FIELDS, HistoryEntry, JobStatus

__all__ = ["DEFAULT_LIMIT", "job_duration", "recent_progress", "stage_durations"]

DEFAULT_LIMIT: Final = 50
"""Finished jobs of a type the medians are taken over: the newest ones."""
_IN_LIST: Final = 500
"""Ids per ``IN (...)``: a statement stays well under every driver's parameter limit."""
_START_SLACK: Final = timedelta(seconds=1)
"""A history whose oldest row is later than the job's start by more than this was trimmed."""


def stage_durations(
    store: JobStore, job_type: str, *, limit: int = DEFAULT_LIMIT
) -> dict[str, float]:
    """Median seconds per stage over the last ``limit`` FINISHED jobs of ``job_type``.

    Stages no finished job went through are absent; an empty dict when there are no
    finished jobs of the type (or none that reported a stage).
    """
    _check_limit(limit)
    with store._reading() as connection:
        jobs = _finished(connection, job_type, limit)
        if not jobs:
            return {}
        rows = _stage_rows(connection, [job_id for job_id, _, _ in jobs])
    samples: dict[str, list[float]] = defaultdict(list)
    for job_id, started_at, finished_at in jobs:
        for stage, seconds in _job_stages(rows.get(job_id, []), started_at, finished_at):
            samples[stage].append(seconds)
    return {stage: statistics.median(values) for stage, values in samples.items()}


def job_duration(store: JobStore, job_type: str, *, limit: int = DEFAULT_LIMIT) -> float | None:
    """Median seconds from start to finish of the last ``limit`` FINISHED jobs of ``job_type``;
    None when there are none."""
    _check_limit(limit)
    with store._reading() as connection:
        jobs = _finished(connection, job_type, limit)
    seconds = [(finished - started).total_seconds() for _, started, finished in jobs
               if started is not None and finished is not None and finished >= started]
    return statistics.median(seconds) if seconds else None


def recent_progress(
    store: JobStore, job_ids: Sequence[str], *, window: int = 20
) -> dict[str, list[HistoryEntry]]:
    """The last ``window`` progress rows (with a percentage) of each job, oldest first;
    a job without any is absent. One query per 500 jobs (``ROW_NUMBER() OVER``)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    events = q.EVENTS
    found: dict[str, list[HistoryEntry]] = {}
    with store._reading() as connection:
        for page in _pages(list(dict.fromkeys(job_ids))):
            rank = func.row_number().over(partition_by=events.c.job_id,
                                          order_by=events.c.id.desc()).label("rank")
            inner = (select(events, rank)
                     .where(events.c.job_id.in_(page), events.c.kind == "progress",
                            events.c.percentage.is_not(None))
                     .subquery())
            query = (select(*(inner.c[name] for name in EVENT_FIELDS))
                     .where(inner.c.rank <= window)
                     .order_by(inner.c.job_id, inner.c.id))
            for row in connection.execute(query):
                entry = HistoryEntry.from_row(row._mapping)
                found.setdefault(entry.job_id, []).append(entry)
    return found


# -- the queries and the stitching --------------------------------------------------------

Finished = tuple[str, datetime | None, datetime | None]
"""A finished job: (id, started_at, finished_at)."""
StageRow = tuple[str | None, datetime | None, datetime | None, datetime]
"""One (job, stage) group: (stage, first non-completion row, completion row, first row)."""


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def _finished(connection: Connection, job_type: str, limit: int) -> list[Finished]:
    jobs = q.JOBS
    query = (select(jobs.c.id, jobs.c.started_at, jobs.c.finished_at)
             .where(jobs.c.job_type == job_type, jobs.c.status == JobStatus.FINISHED,
                    jobs.c.finished_at.is_not(None))
             .order_by(jobs.c.finished_at.desc(), jobs.c.id.desc())
             .limit(limit))
    return [(row.id, row.started_at, row.finished_at) for row in connection.execute(query)]


def _stage_rows(connection: Connection, job_ids: list[str]) -> dict[str, list[StageRow]]:
    """Per job, per stage (None included): when its rows began; one GROUP BY per page."""
    events = q.EVENTS
    completed = events.c.kind == "completion"
    first_at = type_coerce(func.min(case((~completed, events.c.at))), UTCDateTime())
    completion_at = type_coerce(func.min(case((completed, events.c.at))), UTCDateTime())
    earliest = type_coerce(func.min(events.c.at), UTCDateTime())
    found: dict[str, list[StageRow]] = defaultdict(list)
    for page in _pages(job_ids):
        query = (select(events.c.job_id, events.c.stage, first_at, completion_at, earliest)
                 .where(events.c.job_id.in_(page))
                 .group_by(events.c.job_id, events.c.stage))
        for job_id, stage, first, completion, oldest in connection.execute(query):
            found[job_id].append((stage, first, completion, oldest))
    return found


def _job_stages(
    rows: list[StageRow], started_at: datetime | None, finished_at: datetime | None
) -> Iterator[tuple[str, float]]:
    """(stage, seconds) for each stage one finished job went through, in the order it did."""
    if not rows:
        return
    starts = sorted((first, stage) for stage, first, _, _ in rows
                    if stage is not None and first is not None)
    completions = [completion for _, _, completion, _ in rows if completion is not None]
    end = min(completions) if completions else finished_at
    oldest = min(row[3] for row in rows)
    trimmed = started_at is not None and oldest > started_at + _START_SLACK
    for index, (first, stage) in enumerate(starts):
        following = starts[index + 1][0] if index + 1 < len(starts) else end
        if (index == 0 and trimmed) or following is None or following < first:
            continue
        yield stage, (following - first).total_seconds()


def _pages(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _IN_LIST):
        yield ids[start:start + _IN_LIST]
