"""The tables: ``jobs``, ``job_events`` (history) and ``job_mappings`` (worker/task -> job).

The migrations in ``migrations/versions`` create exactly this schema; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from morag_jobs.stages import StagePlan
from morag_jobs.store.records import JobStatus

__all__ = [
    "ApiKeyRow",
    "Base",
    "JobEventRow",
    "JobMappingRow",
    "JobRow",
    "StagePlanType",
    "UTCDateTime",
    "WebhookDeliveryRow",
    "WebhookEndpointRow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
STATUS_VALUES = ", ".join(f"'{status.value}'" for status in JobStatus)
_FINISHED = f"status = '{JobStatus.FINISHED.value}'"
_REMOTE_RUNNING = (f"claim = 'remote' AND status IN ('{JobStatus.PENDING.value}', "
                   f"'{JobStatus.PROCESSING.value}')")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on PostgreSQL and on SQLite.

    SQLite has no time zones: values are stored as UTC wall-clock time and read back with
    ``tzinfo=UTC``. A naive value is taken to be UTC already, as ``ProgressEvent`` does.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Real(TypeDecorator[float]):
    """A float that reads back as ``float``: SQLite's RETURNING hands ``0.0`` back as ``0``."""

    impl = Float
    cache_ok = True

    def process_result_value(self, value: float | None, dialect: Dialect) -> float | None:
        return None if value is None else float(value)


class StatusType(TypeDecorator[JobStatus]):
    """A ``JobStatus`` stored as its value; plain strings are accepted case-insensitively."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: JobStatus | str | None, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus.parse(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


class StagePlanType(TypeDecorator[StagePlan]):
    """A ``StagePlan`` stored as JSON ``[[name, start, end], ...]``."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        plan = value if isinstance(value, StagePlan) else StagePlan.from_dict(value)
        return plan.to_dict()

    def process_result_value(self, value: Any, dialect: Dialect) -> StagePlan | None:
        return None if value is None else StagePlan.from_dict(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobRow(Base):
    __tablename__ = "jobs"
    # The indexes serve the store's real queries (migration 0008; bench/explain_bench.py
    # checks each with EXPLAIN ANALYZE at 1,000,000 jobs): the filter's columns, then the
    # order, then ``id`` (the tie-breaker of every ORDER BY), so a page is a range read in
    # order and a capped count a range read. Every job write updates every index (it
    # changes the indexed ``updated_at``): an index no query needs is not kept.
    __table_args__ = (
        CheckConstraint(f"status IN ({STATUS_VALUES})", name="status"),
        # GET /api/v1/jobs, newest first: unfiltered, by status, by user (alone or with
        # a status); by type (with or without a status) and the capped totals of each
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_created_at_id", "status", "created_at", "id"),
        Index("ix_jobs_user_id_created_at_id", "user_id", "created_at", "id"),
        Index("ix_jobs_user_id_status_created_at_id", "user_id", "status", "created_at", "id"),
        Index("ix_jobs_job_type_status_created_at_id", "job_type", "status", "created_at",
              "id"),
        # the stream poll: the jobs changed since its cursor, oldest change first
        Index("ix_jobs_updated_at_id", "updated_at", "id"),
        # a parent's children in the canvas's order; ON DELETE CASCADE finds them too
        Index("ix_jobs_parent_id_created_at_id", "parent_id", "created_at", "id"),
        # the reaper's remote jobs by lease: partial, it holds only the running ones
        Index("ix_jobs_remote_lease_until", "lease_until", "id",
              postgresql_where=text(_REMOTE_RUNNING), sqlite_where=text(_REMOTE_RUNNING)),
        # the ETA's prior: the newest FINISHED jobs of a type (store/durations.py)
        Index("ix_jobs_finished_job_type_finished_at_id", "job_type", "finished_at", "id",
              postgresql_where=text(_FINISHED), sqlite_where=text(_FINISHED)),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    job_type: Mapped[str | None] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[JobStatus] = mapped_column(
        StatusType(), server_default=JobStatus.PENDING.value
    )
    percentage: Mapped[float] = mapped_column(Real(), server_default="0")
    stage: Mapped[str | None] = mapped_column(String(128))
    stage_percent: Mapped[float | None] = mapped_column(Real())
    current: Mapped[int | None] = mapped_column(BigInteger)
    total: Mapped[int | None] = mapped_column(BigInteger)
    summary: Mapped[str] = mapped_column(Text, server_default="")
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    stages: Mapped[StagePlan | None] = mapped_column(StagePlanType())
    webhook_url: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_clock: Mapped[str | None] = mapped_column(String(64))
    last_sequence: Mapped[int | None] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, server_default="0")
    ignored_count: Mapped[int] = mapped_column(Integer, server_default="0")
    claim: Mapped[str | None] = mapped_column(String(16))
    lease_seconds: Mapped[float | None] = mapped_column(Real)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    parent_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("jobs.id", ondelete="CASCADE"))
    weight: Mapped[float] = mapped_column(Real, server_default="1")
    children: Mapped[int] = mapped_column(Integer, server_default="0")
    children_done: Mapped[int] = mapped_column(Integer, server_default="0")
    children_failed: Mapped[int] = mapped_column(Integer, server_default="0")
    children_weight: Mapped[float] = mapped_column(Real, server_default="0")
    progress_sum: Mapped[float] = mapped_column(Real, server_default="0")
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")


class JobEventRow(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    # BIGINT on PostgreSQL; INTEGER on SQLite, where only that aliases the autoincrementing rowid.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    percentage: Mapped[float | None] = mapped_column(Real())
    stage: Mapped[str | None] = mapped_column(String(128))
    stage_percent: Mapped[float | None] = mapped_column(Real())
    current: Mapped[int | None] = mapped_column(BigInteger)
    total: Mapped[int | None] = mapped_column(BigInteger)
    message: Mapped[str | None] = mapped_column(Text)
    status: Mapped[JobStatus | None] = mapped_column(StatusType())
    source: Mapped[str] = mapped_column(String(32), server_default="api")
    kind: Mapped[str] = mapped_column(String(32), server_default="progress")
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    format: Mapped[str | None] = mapped_column(String(128))


class JobMappingRow(Base):
    __tablename__ = "job_mappings"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKeyRow(Base):
    """An API key: only its SHA-256 hash is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))  # "worker" | "user" | "admin"
    subject: Mapped[str | None] = mapped_column(String(255))  # the worker or user id
    label: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookEndpointRow(Base):
    """A webhook URL registered for every job of one type."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_type: Mapped[str] = mapped_column(String(128), index=True)
    url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDeliveryRow(Base):
    """The outbox: one row per webhook message, retried until delivered or given up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    message_id: Mapped[str] = mapped_column(String(64), unique=True)  # the webhook-id header
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    response_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
