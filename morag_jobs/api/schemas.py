"""The HTTP API's request and response bodies (pydantic 2), and their OpenAPI error answers.

Request bodies are strict: unknown fields, strings where numbers belong, NaN and
infinity are refused with 422 before anything is written. Strings are checked for what
the database cannot store (NUL characters, lone surrogates), so a bad body is a 4xx,
never a 500 from the driver.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from morag_jobs import _config
from morag_jobs.events import check_percent
from morag_jobs.store import HistoryEntry, Job, JobStatus

__all__ = [
    "BIGINT_MAX",
    "DERIVED_JOB_FIELDS",
    "ERRORS",
    "HIDDEN_JOB_FIELDS",
    "MAX_ID_LENGTH",
    "Completion",
    "ErrorBody",
    "EventOut",
    "EventPage",
    "Health",
    "JobCreate",
    "JobOut",
    "JobPage",
    "JobView",
    "ProgressUpdate",
    "UpdateAccepted",
    "ValidationErrorBody",
    "errors",
    "storable_text",
]

MAX_ID_LENGTH = 64
BIGINT_MAX = 2**63 - 1
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""Path and query identifiers: printable characters (no control characters, no NUL)."""


def storable_text(value: str) -> str:
    """Refuse text a database cannot store: NUL (PostgreSQL) and lone surrogates (UTF-8)."""
    if "\x00" in value:
        raise ValueError("text cannot contain NUL characters (\\u0000); remove them")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates); fix its encoding")\
            from None
    return value


Text = Annotated[str, Field(strict=True), AfterValidator(storable_text)]


def _iso_text(value: Any) -> Any:
    """A timestamp is ISO 8601 text: a bare number (or digits in a string) is refused
    rather than guessed at as seconds or milliseconds since the epoch."""
    if not isinstance(value, str) or value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("a timestamp is ISO 8601 text, e.g. 2026-03-01T12:00:00Z")
    return value


def _whole_number(value: Any) -> Any:
    """JSON has one number type: 291.0 is the integer 291 (many encoders write it so),
    291.5 is not an integer, and neither text nor booleans are numbers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _percent(value: float) -> float:
    """The rule of percentages (``check_percent``), strictly: above 100 is refused too.

    NaN and infinity never get here (the models refuse them as numbers); the schema's
    ``minimum``/``maximum`` document the bounds, a test keeps them equal to the rule's.
    """
    return check_percent(value, over_100=False)


Timestamp = Annotated[datetime, BeforeValidator(_iso_text)]
Whole = Annotated[StrictInt, BeforeValidator(_whole_number)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ProgressUpdate(_Strict):
    """A remote worker's progress report (seed 004's body, plus stage, counts and sequence)."""

    percentage: Annotated[
        float,
        Field(strict=True, json_schema_extra={"minimum": 0, "maximum": 100},
              description="Progress 0-100 (of the stage when `stage` is given, else overall). "
                          "NaN, infinity, negatives and values above 100 are refused."),
        AfterValidator(_percent),
    ]
    message: Annotated[Text, Field(max_length=4096, description="What the worker is doing.")]
    timestamp: Annotated[
        Timestamp,
        Field(description="When the worker measured this progress (ISO 8601; no zone = UTC). "
                          "Reports older than the last applied one are ignored."),
    ]
    stage: Annotated[
        Annotated[Text, Field(min_length=1, max_length=128)] | None,
        Field(description="Stage this percentage is relative to."),
    ] = None
    current: Annotated[Whole | None, Field(ge=0, le=BIGINT_MAX)] = None
    total: Annotated[Whole | None, Field(ge=1, le=BIGINT_MAX)] = None
    sequence: Annotated[
        Whole | None,
        Field(ge=0, le=BIGINT_MAX,
              description="Increasing number per job; a report whose sequence is not above "
                          "the last applied one is a no-op (safe retries)."),
    ] = None


def storable_json(value: Any, depth: int = 0) -> Any:
    """JSON a database can store: finite numbers, storable text, at most 32 levels deep."""
    if depth > 32:
        raise ValueError("nested deeper than 32 levels; flatten it")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("contains NaN or infinity; send finite numbers")
    if isinstance(value, str):
        storable_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            storable_text(key)
            storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            storable_json(item, depth + 1)
    return value


class Completion(_Strict):
    """A remote worker's end of a job: success or failure, a message, an optional result."""

    success: StrictBool
    message: Annotated[Text, Field(max_length=4096)] = ""
    result: Annotated[
        dict[str, Any] | None,
        Field(description="Stored in the job's metadata under `result`."),
        AfterValidator(storable_json),
    ] = None


class JobCreate(_Strict):
    """A job made over HTTP: for a remote worker to report on, or for a system to track."""

    name: Annotated[Text | None, Field(max_length=255)] = None
    job_type: Annotated[
        Annotated[str, Field(min_length=1, max_length=255, pattern=ID_PATTERN)] | None,
        Field(description="Its type: a stage plan registered for it applies."),
    ] = None
    stages: Annotated[
        dict[str, tuple[float, float]] | None,
        Field(description="Its stage plan: stage name -> [start, end] of the overall 0-100, "
                          'in order, e.g. {"download": [0, 10], "processing": [10, 100]}.'),
    ] = None
    worker_id: Annotated[
        Annotated[str, Field(min_length=1, max_length=255, pattern=ID_PATTERN)] | None,
        Field(description="The remote worker it is assigned to: that worker's key may report "
                          "on it (a worker may hold many jobs)."),
    ] = None
    lease_seconds: Annotated[
        float | Literal["none"] | None,
        Field(description='Seconds the worker may go without a report before the job is '
                          'failed ("lease expired"); each report renews it. None or "none": '
                          "no lease."),
    ] = None
    user_id: Annotated[
        Annotated[str, Field(min_length=1, max_length=255, pattern=ID_PATTERN)] | None,
        Field(description="Whose job it is (admin keys only; a user key's jobs are its own)."),
    ] = None
    job_id: Annotated[
        Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)] | None,
        Field(description="An id of your own; a new one is made when absent."),
    ] = None
    metadata: Annotated[dict[str, Any], AfterValidator(storable_json)] = Field(
        default_factory=dict)

    def lease(self) -> float | None:
        """The lease in seconds, None for none; a lease must be a positive finite number."""
        if self.lease_seconds in (None, "none"):
            return None
        value = float(self.lease_seconds)  # type: ignore[arg-type]
        if not 0 < value <= _config.MAX_LEASE:
            raise ValueError(f"lease_seconds must be positive seconds up to "
                             f"{_config.MAX_LEASE:g} (a year) or 'none', got {value}")
        return value


class UpdateAccepted(BaseModel):
    """What became of a progress report."""

    job_id: str
    outcome: Literal["queued", "applied", "stale", "duplicate", "stage_behind"] = Field(
        description="`queued`: accepted, written within the coalescing interval; `applied`: "
                    "written (with ?wait=true); `stale`/`duplicate`/`stage_behind`: a no-op."
    )
    job: JobOut | None = Field(None, description="The job as written (with ?wait=true).")


class JobOut(BaseModel):
    """One job as stored: every field of ``Job`` but ``HIDDEN_JOB_FIELDS``."""

    id: str
    name: str | None = None
    job_type: str | None = None
    user_id: str | None = None
    status: JobStatus
    percentage: float
    stage: str | None = None
    stage_percent: float | None = None
    current: int | None = None
    total: int | None = None
    summary: str = ""
    error: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    stages: list[tuple[str, float, float]] | None = None
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
    version: int
    ignored_count: int = 0
    claim: str | None = None
    lease_seconds: float | None = None
    lease_until: datetime | None = None
    parent_id: str | None = None
    weight: float = 1.0
    children: int = 0
    children_done: int = 0
    children_failed: int = 0
    children_weight: float = 0.0
    progress_sum: float = 0.0
    attempt: int = 0

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls.model_validate(job_json(job))


HIDDEN_JOB_FIELDS = frozenset({"webhook_url"})
"""Fields of ``Job`` the API never shows; ``JobOut`` has every other one (a test checks)."""


def job_json(job: Job) -> dict[str, Any]:
    """A job as the API shows it (JSON-ready): the row without its hidden fields."""
    data = job.to_dict()
    for name in HIDDEN_JOB_FIELDS:
        data.pop(name, None)
    return data


class JobView(JobOut):
    """A job as ``GET /api/v1/jobs`` and ``/jobs/{id}`` show it: every field of ``JobOut``
    and what the API works out when it answers (``DERIVED_JOB_FIELDS``), which no table
    stores. ``JobOut`` stays the mirror of ``Job`` (``tests/test_declared_once.py``)."""

    eta_seconds: float | None = Field(
        None, description="Seconds the job still needs, as estimated when the answer was made "
                          "(the typical stage durations of finished jobs of its type, blended "
                          "with its live rate); null unless it is PROCESSING and the estimate "
                          "has something to go by.")

    @classmethod
    def of(cls, job: Job, eta: timedelta | None = None) -> JobView:
        seconds = round(eta.total_seconds(), 1) if eta is not None else None
        return cls.model_validate({**job_json(job), "eta_seconds": seconds})


DERIVED_JOB_FIELDS = frozenset(JobView.model_fields) - frozenset(JobOut.model_fields)
"""What ``JobView`` adds to a job: worked out at read time, never a field of ``Job``."""


class JobPage(BaseModel):
    items: list[JobView]
    total: int = Field(description=(
        "Jobs matching the filters, over all pages; a lower bound when "
        "`total_is_lower_bound` is true."))
    total_is_lower_bound: bool = Field(False, description=(
        "True when more than `total` jobs match: the list counts at most 10,000 "
        "(or `offset + limit + 1`, when more) rather than every matching job, and "
        "`total` is then more than `offset + len(items)`."))
    limit: int
    offset: int


class EventOut(BaseModel):
    """One applied update in a job's history: every field of ``HistoryEntry``."""

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
    source: str
    kind: str
    reported_at: datetime | None = None
    format: str | None = None

    @classmethod
    def of(cls, event: HistoryEntry) -> EventOut:
        return cls.model_validate(event.to_dict())


class EventPage(BaseModel):
    items: list[EventOut]
    next_after_id: int | None = Field(
        description="Pass as `after_id` for the next page; null when this page is the last."
    )


class Health(BaseModel):
    status: Literal["ok"]
    database: str | None = Field(
        None, description="The database URL, password masked (shown to an admin key only).")


class ErrorBody(BaseModel):
    """Every error: one sentence saying what was wrong and what to do."""

    detail: str


class ValidationErrorBody(ErrorBody):
    """A 422: ``detail`` sums it up, ``errors`` lists each bad field."""

    errors: list[dict[str, Any]] = Field(default_factory=list)


ERRORS: dict[int, tuple[type[BaseModel], str]] = {
    401: (ErrorBody, "No API key, or one that is unknown or revoked (WWW-Authenticate: Bearer)."),
    403: (ErrorBody, "The key may not do this (its scope or its worker does not allow it)."),
    404: (ErrorBody, "No such job, or one this key may not read (existence is not revealed)."),
    409: (ErrorBody, "The job has already ended; it takes no more progress."),
    413: (ErrorBody, "The request body is larger than the server's limit."),
    422: (ValidationErrorBody, "The request is malformed: see `detail` and `errors`."),
    503: (ErrorBody, "The job database is unreachable; retry after `Retry-After` seconds."),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry documenting these error codes."""
    return {code: {"model": ERRORS[code][0], "description": ERRORS[code][1]} for code in codes}


UpdateAccepted.model_rebuild()
