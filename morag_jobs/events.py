"""``ProgressEvent``: the one currency between progress sources and the handler."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from morag_jobs.errors import InvalidProgress

__all__ = ["FUTURE_TOLERANCE", "ProgressEvent", "check_percent", "not_ahead", "utc_now"]

FUTURE_TOLERANCE = timedelta(seconds=5)
"""How far ahead of this machine's clock an event's timestamp may be before it is clamped."""


def utc_now() -> datetime:
    """Arrival time: every event carries an aware UTC timestamp."""
    return datetime.now(UTC)


def check_percent(value: float, *, over_100: bool = True) -> float:
    """Return ``value`` as a float, or raise ``InvalidProgress`` for NaN, infinity or < 0
    (and, with ``over_100=False``, above 100): the one rule of what a percentage may be.

    Values above 100 pass by default: the handler clamps them and warns, so that a source
    that overshoots still moves its job to the end. A source that must be exact refuses
    them (the HTTP API answers 422).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidProgress(value, "a percentage must be a number") from None
    if not math.isfinite(number):
        raise InvalidProgress(value, "a percentage must be finite (not NaN or infinity)")
    if number < 0:
        raise InvalidProgress(value, "a percentage cannot be negative")
    if number > 100 and not over_100:
        raise InvalidProgress(value, "a percentage cannot be above 100")
    return number


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One observation of progress, from a log line, a callback or a remote worker.

    ``percent`` is on the scale of whatever reported it: relative to ``stage`` when a
    stage is named, otherwise relative to the job's current stage or the whole job.
    When only ``current``/``total`` are known, ``percent`` is derived from them.
    """

    percent: float | None = None
    current: int | None = None
    total: int | None = None
    message: str = ""
    stage: str | None = None
    timestamp: datetime = field(default_factory=utc_now)
    logger: str | None = None
    level: str | None = None
    task_id: str | None = None
    worker_id: str | None = None
    process: str | None = None
    job_id: str | None = None
    format: str | None = None
    raw: str | None = None
    sequence: int | None = None
    source: str = "log"
    attempt: int | None = None
    """The attempt (numbered start of the job's task) that reported it, when known: an
    event from an attempt older than the job's current one is refused ("superseded")."""

    def __post_init__(self) -> None:
        percent = self.percent
        if percent is None:
            if self.current is not None and self.total:
                object.__setattr__(self, "percent", self.current / self.total * 100.0)
        elif percent.__class__ is not float or math.isnan(percent) or percent < 0:
            object.__setattr__(self, "percent", check_percent(percent))
        elif percent == math.inf:
            check_percent(percent)
        if self.timestamp.tzinfo is None:
            object.__setattr__(self, "timestamp", self.timestamp.replace(tzinfo=UTC))

    @classmethod
    def _checked_by_parser(  # noqa: PLR0917 - the parser's hot path passes positions
        cls,
        percent: float | None,
        current: int | None,
        total: int | None,
        message: str,
        stage: str | None,
        timestamp: datetime,
        fields: dict[str, Any],
        format: str,
        raw: str,
    ) -> ProgressEvent:
        """An event from values the parser has already checked (finite, in range, aware).

        Skips ``__init__``'s per-field frozen-dataclass writes, which cost a third of a
        progress line's parse time; the slots are filled through their descriptors.
        """
        event = _new(cls)
        if percent is None and current is not None and total:
            percent = current / total * 100.0
        get = fields.get
        (s_percent, s_current, s_total, s_message, s_stage, s_timestamp, s_logger, s_level,
         s_task_id, s_worker_id, s_process, s_job_id, s_format, s_raw, s_sequence,
         s_source, s_attempt) = _SETTERS
        s_percent(event, percent)
        s_current(event, current)
        s_total(event, total)
        s_message(event, message)
        s_stage(event, stage)
        s_timestamp(event, timestamp)
        s_logger(event, get("logger"))
        s_level(event, get("level"))
        s_task_id(event, get("task_id"))
        s_worker_id(event, get("worker_id"))
        s_process(event, get("process"))
        s_job_id(event, get("job_id"))
        s_format(event, format)
        s_raw(event, raw)
        s_sequence(event, None)
        s_source(event, "log")
        s_attempt(event, None)
        return event

    # The names of the original MoRAG parser, kept so its callers keep working.
    @property
    def percentage(self) -> float | None:
        return self.percent

    @property
    def logger_name(self) -> str | None:
        return self.logger

    @property
    def raw_event(self) -> str | None:
        return self.raw

    @property
    def description(self) -> str:
        return self.message

    @property
    def clock(self) -> str:
        """Which clock stamped this event: its source and, for a remote worker, which one.

        Timestamps are only compared between events of one clock: a remote worker whose
        clock runs an hour fast must not make the log tap's events look stale.
        """
        clock = f"{self.source}:{self.worker_id}" if self.worker_id else self.source
        return clock[:64]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the timestamp as ISO 8601, everything else as is (``attempt``
        only when known: it is a worker's, never a log line's)."""
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        if data["attempt"] is None:
            del data["attempt"]
        return data


def not_ahead(event: ProgressEvent, now: datetime) -> ProgressEvent | None:
    """``event`` stamped ``now`` when its timestamp is ahead of ``now`` by more than the
    tolerance (a fast clock, a log's local time read as UTC), else None (keep it)."""
    if event.timestamp > now + FUTURE_TOLERANCE:
        return replace(event, timestamp=now)
    return None


_new = object.__new__
_SETTERS = tuple(
    ProgressEvent.__dict__[name].__set__ for name in ProgressEvent.__dataclass_fields__
)
