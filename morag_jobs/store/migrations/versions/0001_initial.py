"""The job table, its history and the worker/task mappings.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'PENDING', 'PROCESSING', 'FINISHED', 'FAILED', 'CANCELLED'"


def _when(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    _create_jobs()
    _create_job_events()
    _create_job_mappings()


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("job_type", sa.String(128), nullable=True),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), server_default="PENDING", nullable=False),
        sa.Column("percentage", sa.Float(), server_default="0", nullable=False),
        sa.Column("stage", sa.String(128), nullable=True),
        sa.Column("stage_percent", sa.Float(), nullable=True),
        sa.Column("current", sa.BigInteger(), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("summary", sa.Text(), server_default="", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.String(255), nullable=True),
        _when("created_at", nullable=False),
        _when("started_at"),
        _when("updated_at", nullable=False),
        _when("finished_at"),
        _when("last_progress_at"),
        _when("heartbeat_at"),
        _when("last_event_at"),
        sa.Column("last_sequence", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("ignored_count", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_jobs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_job_type"), "jobs", ["job_type"])
    op.create_index(op.f("ix_jobs_user_id"), "jobs", ["user_id"])
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"])
    op.create_index(op.f("ix_jobs_created_at"), "jobs", ["created_at"])
    op.create_index("ix_jobs_status_updated_at", "jobs", ["status", "updated_at"])


def _create_job_events() -> None:
    op.create_table(
        "job_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(64), nullable=False),
        _when("at", nullable=False),
        sa.Column("percentage", sa.Float(), nullable=True),
        sa.Column("stage", sa.String(128), nullable=True),
        sa.Column("stage_percent", sa.Float(), nullable=True),
        sa.Column("current", sa.BigInteger(), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("source", sa.String(32), server_default="api", nullable=False),
        sa.Column("kind", sa.String(32), server_default="progress", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])


def _create_job_mappings() -> None:
    op.create_table(
        "job_mappings",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        _when("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_mappings_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("kind", "key", name=op.f("pk_job_mappings")),
    )
    op.create_index(op.f("ix_job_mappings_job_id"), "job_mappings", ["job_id"])


def downgrade() -> None:
    op.drop_table("job_mappings")
    op.drop_table("job_events")
    op.drop_table("jobs")
