"""Immutable snapshots of stored rows: what the store hands out and the handler reasons about."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from morag_jobs.stages import StagePlan

__all__ = [
    "EVENT_FIELDS",
    "JOB_FIELDS",
    "HistoryEntry",
    "Job",
    "JobChanges",
    "JobEventRecord",
    "JobStatus",
]

JobChanges = dict[str, Any]
"""Job field names (``metadata``, or its column attribute ``meta``) to new values."""


class JobStatus(enum.StrEnum):
    """The life of a job: PENDING until progress, PROCESSING, then one terminal status."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @classmethod
    def parse(cls, value: JobStatus | str) -> JobStatus:
        """``value`` as a status, case-insensitively; ``ValueError`` names the allowed ones."""
        if isinstance(value, JobStatus):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            allowed = ", ".join(status.value for status in cls)
            raise ValueError(f"unknown job status {value!r}; use one of {allowed}") from None


_TERMINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the job table as it was when read; change it through ``JobStore.update_job``."""

    id: str
    name: str | None = None
    job_type: str | None = None
    user_id: str | None = None
    status: JobStatus = JobStatus.PENDING
    percentage: float = 0.0
    stage: str | None = None
    stage_percent: float | None = None
    current: int | None = None
    total: int | None = None
    summary: str = ""
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    stages: StagePlan | None = None
    webhook_url: str | None = None
    worker_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    last_progress_at: datetime | None = None
    heartbeat_at: datetime | None = None
    last_event_at: datetime | None = None
    last_event_clock: str | None = None
    last_sequence: int | None = None
    version: int = 0
    ignored_count: int = 0
    claim: str | None = None
    """Who answers for the job while it runs, and so which reaper rule may judge it:
    ``"queued"`` (sent to Celery, not started), ``"celery"`` (a Celery worker runs it:
    heartbeats), ``"remote"`` (a remote worker: a lease renewed by each report), None
    (nobody the reaper can judge: a followed log, a script)."""
    lease_seconds: float | None = None
    """A remote job's lease: how long it may go without a report (None: forever)."""
    lease_until: datetime | None = None
    parent_id: str | None = None
    """The parent job (a Celery canvas: group, chain, chord) this job is one task of."""
    weight: float = 1.0
    """This job's share of its parent's percentage, relative to its siblings' weights."""
    children: int = 0
    """A parent's number of children; the four below are running sums kept on every
    child write, so a parent is read as one row however many children it has."""
    children_done: int = 0
    children_failed: int = 0
    children_weight: float = 0.0
    progress_sum: float = 0.0
    """Sum over the children of weight x percentage: the parent's percentage is
    ``progress_sum / children_weight``."""
    attempt: int = 0
    """How many times a worker started the job's task: each start is a fenced attempt."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        values = {name: row[name] for name in JOB_FIELDS}
        values["metadata"] = values["metadata"] or {}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ISO 8601 datetimes, the status as its value, stages as ``to_dict()``."""
        data: dict[str, Any] = {}
        for name in JOB_FIELDS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = _iso(value)
            data[name] = value
        data["status"] = self.status.value
        data["metadata"] = dict(self.metadata)
        data["stages"] = self.stages.to_dict() if self.stages is not None else None
        return data


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One row of a job's history: an update as it was applied (a ``ProgressEvent`` is
    what arrives; a history entry is what was written)."""

    id: int
    job_id: str
    at: datetime
    percentage: float | None = None
    stage: str | None = None
    stage_percent: float | None = None
    current: int | None = None
    total: int | None = None
    message: str | None = None
    status: JobStatus | None = None
    source: str = "api"
    kind: str = "progress"
    reported_at: datetime | None = None
    """When the source says it measured this (a log line's own time), if it said."""
    format: str | None = None
    """The log format that recognised it (``tqdm.bar``, ``generic``...), for parsed lines."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> HistoryEntry:
        return cls(**{name: row[name] for name in EVENT_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in EVENT_FIELDS}
        data["at"] = _iso(self.at)
        data["reported_at"] = _iso(self.reported_at)
        data["status"] = self.status.value if self.status is not None else None
        return data


JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Job))
EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(HistoryEntry))


JobEventRecord = HistoryEntry
"""The name version 0 used for a history row; kept so existing imports work."""
