"""The SQL the store runs, built as SQLAlchemy Core statements; one small function each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, TypedDict, Unpack, cast

from sqlalchemy import (
    ColumnElement,
    Delete,
    Insert,
    Select,
    Table,
    Update,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import UnaryExpression

from morag_jobs.store.models import JobEventRow, JobMappingRow, JobRow, UTCDateTime
from morag_jobs.store.records import EVENT_FIELDS, JOB_FIELDS, Job, JobChanges, JobStatus

JOBS = cast(Table, JobRow.__table__)
EVENTS = cast(Table, JobEventRow.__table__)
MAPPINGS = cast(Table, JobMappingRow.__table__)

MappingKind = Literal["worker", "task"]
MAPPING_KINDS: tuple[str, ...] = ("worker", "task")
ORDERABLE = ("created_at", "updated_at", "percentage", "status")
StatusFilter = JobStatus | str | Iterable[JobStatus | str] | None

_WRITABLE = frozenset(JOB_FIELDS) - {"id", "version"}
_HISTORY_FIELDS = frozenset(EVENT_FIELDS) - {"id", "job_id"}
_ATTRIBUTE_ALIASES = {"meta": "metadata"}  # the ORM attribute for the "metadata" column
_UPSERT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def column_values(changes: JobChanges, now: datetime) -> dict[str, Any]:
    """``changes`` keyed by column; ``updated_at`` is ``now`` unless the change sets it."""
    values: dict[str, Any] = {}
    for key, value in changes.items():
        column = _ATTRIBUTE_ALIASES.get(key, key)
        if column not in _WRITABLE:
            raise ValueError(
                f"cannot change job field {key!r}: "
                "id and version belong to the store, other names are not columns"
            )
        values[column] = value
    values.setdefault("updated_at", now)
    return values


def check_history(history: Mapping[str, Any]) -> None:
    unknown = sorted(set(history) - _HISTORY_FIELDS)
    if unknown:
        raise ValueError(
            f"history has unknown fields {unknown}; allowed: {sorted(_HISTORY_FIELDS)}"
        )


def event_values(job: Job, history: Mapping[str, Any]) -> dict[str, Any]:
    """A ``job_events`` row: what ``history`` says, the rest from the job as just written."""
    values: dict[str, Any] = {
        "job_id": job.id,
        "at": job.updated_at,
        "percentage": job.percentage,
        "stage": job.stage,
        "stage_percent": job.stage_percent,
        "current": job.current,
        "total": job.total,
        "message": job.summary,
        "status": job.status,
        "source": "api",
        "kind": "progress",
    }
    values.update(history)
    return values


def compare_and_set(job: Job, values: Mapping[str, Any]) -> Update:
    """Write ``values`` only if nobody wrote since ``job`` was read; returns the new row."""
    return (
        update(JOBS)
        .where(JOBS.c.id == job.id, JOBS.c.version == job.version)
        .values({**values, "version": JOBS.c.version + 1})
        .returning(*JOBS.c)
    )


def trim_history(job_id: str, keep: int) -> Delete:
    """Delete all but the newest ``keep`` events of a job: one indexed statement."""
    newest_dropped = (
        select(EVENTS.c.id)
        .where(EVENTS.c.job_id == job_id)
        .order_by(EVENTS.c.id.desc())
        .offset(keep)
        .limit(1)
        .scalar_subquery()
    )
    return delete(EVENTS).where(EVENTS.c.job_id == job_id, EVENTS.c.id <= newest_dropped)


def statuses(status: StatusFilter) -> list[JobStatus] | None:
    """The statuses a filter names, None for no filter."""
    if status is None:
        return None
    if isinstance(status, str):
        return [JobStatus.parse(status)]
    return [JobStatus.parse(item) for item in status]


class JobFilters(TypedDict, total=False):
    """The filters ``list_jobs`` and ``count_jobs`` share, declared once; time bounds are
    exclusive and None (or absent) means no filter."""

    status: StatusFilter
    user_id: str | None
    job_type: str | None
    created_after: datetime | None
    created_before: datetime | None
    updated_after: datetime | None


def job_filters(**filters: Unpack[JobFilters]) -> list[ColumnElement[bool]]:
    """WHERE clauses for ``list_jobs``/``count_jobs``."""
    unknown = set(filters) - set(JobFilters.__annotations__)
    if unknown:
        raise TypeError(f"unknown job filter(s): {', '.join(sorted(unknown))}")
    user_id, job_type = filters.get("user_id"), filters.get("job_type")
    created_after, created_before = filters.get("created_after"), filters.get("created_before")
    updated_after = filters.get("updated_after")
    clauses: list[ColumnElement[bool]] = []
    wanted = statuses(filters.get("status"))
    if wanted is not None:
        clauses.append(JOBS.c.status.in_(wanted))
    for column, value in (("user_id", user_id), ("job_type", job_type)):
        if value is not None:
            clauses.append(JOBS.c[column] == value)
    if created_after is not None:
        clauses.append(JOBS.c.created_at > created_after)
    if created_before is not None:
        clauses.append(JOBS.c.created_at < created_before)
    if updated_after is not None:
        clauses.append(JOBS.c.updated_at > updated_after)
    return clauses


def job_order(order_by: str) -> tuple[UnaryExpression[Any], UnaryExpression[Any]]:
    """ORDER BY for ``"created_at"`` or ``"-created_at"`` (descending); ties broken by id."""
    name = order_by.removeprefix("-")
    if name not in ORDERABLE:
        raise ValueError(
            f"cannot order jobs by {order_by!r}; use one of {', '.join(ORDERABLE)}, "
            "optionally prefixed with '-' for descending"
        )
    if order_by.startswith("-"):
        return JOBS.c[name].desc(), JOBS.c.id.desc()
    return JOBS.c[name].asc(), JOBS.c.id.asc()


def last_sign_of_life() -> ColumnElement[datetime]:
    """When a job last showed it was alive: heartbeat, else progress, else start, else update."""
    return func.coalesce(
        JOBS.c.heartbeat_at,
        JOBS.c.last_progress_at,
        JOBS.c.started_at,
        JOBS.c.updated_at,
        type_=UTCDateTime(),
    )


def select_jobs(*clauses: ColumnElement[bool]) -> Select[Any]:
    return select(JOBS).where(*clauses)


def owned_by(
    *, user_id: str | None = None, worker_id: str | None = None
) -> list[ColumnElement[bool]]:
    """The clauses that keep a read to what a key may see, applied in the query itself.

    A user sees its own user's jobs; a worker the jobs assigned to it (``worker_id``) or
    mapped to it. Putting the owner in the WHERE clause means a job the key may not see
    is never read at all, and answers exactly like a job that does not exist.
    """
    clauses: list[ColumnElement[bool]] = []
    if user_id is not None:
        clauses.append(JOBS.c.user_id == user_id)
    if worker_id is not None:
        mapped = select(MAPPINGS.c.job_id).where(
            MAPPINGS.c.kind == "worker", MAPPINGS.c.key == worker_id
        )
        clauses.append(or_(JOBS.c.worker_id == worker_id, JOBS.c.id.in_(mapped)))
    return clauses


def check_mapping_kind(kind: str) -> None:
    if kind not in MAPPING_KINDS:
        raise ValueError(f"mapping kind {kind!r} is not one of {', '.join(MAPPING_KINDS)}")


def dialect_insert(
    dialect: str, table: Table, refusal: str
) -> postgresql.Insert | sqlite.Insert:
    """The dialect's own INSERT, which has ON CONFLICT; ``refusal`` begins the error otherwise."""
    make = _UPSERT_INSERTS.get(dialect)
    if make is None:
        raise NotImplementedError(f"{refusal} PostgreSQL or SQLite, not {dialect}")
    return make(table)


def upsert_mapping(dialect: str, values: Mapping[str, Any]) -> Insert:
    """INSERT ... ON CONFLICT (kind, key) DO UPDATE: a mapping is replaced, never duplicated."""
    statement = dialect_insert(dialect, MAPPINGS, "job mappings need").values(dict(values))
    return statement.on_conflict_do_update(
        index_elements=[MAPPINGS.c.kind, MAPPINGS.c.key],
        set_={"job_id": statement.excluded.job_id, "created_at": statement.excluded.created_at},
    )


def insert_job(values: Mapping[str, Any]) -> Insert:
    return insert(JOBS).values(dict(values)).returning(*JOBS.c)


def insert_event(values: Mapping[str, Any]) -> Insert:
    return insert(EVENTS).values(dict(values))
