"""Who answers for a running job (``claim``) and a remote job's lease.

The reaper judges only what it can: jobs a Celery worker claimed (heartbeats), remote
jobs by their lease, and Celery tasks that never started. Jobs already running when
this migration runs are claimed from what their metadata says (a Celery worker name, a
queued task id); the rest keep no claim, as a followed log's jobs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claim", sa.String(16), nullable=True))
        batch.add_column(sa.Column("lease_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("status", sa.String),
                    sa.column("metadata", sa.JSON), sa.column("claim", sa.String))
    connection = op.get_bind()
    running = connection.execute(
        sa.select(jobs.c.id, jobs.c.status, jobs.c.metadata)
        .where(jobs.c.status.in_(["PENDING", "PROCESSING"]))
    ).all()
    for job_id, status, stored in running:
        metadata = stored or {}
        if "worker" in metadata:
            claim = "celery"
        elif status == "PENDING" and "task_id" in metadata:
            claim = "queued"
        else:
            continue
        connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(claim=claim))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_seconds")
        batch.drop_column("claim")
