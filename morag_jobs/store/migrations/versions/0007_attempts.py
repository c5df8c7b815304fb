"""Fenced attempts: each start of a job's task is a numbered attempt.

When the reaper sends a silent job back to PENDING and Celery delivers its task again,
the new start is attempt N+1; progress and completion from an older attempt (a worker
that was only partitioned, not dead) are refused and counted.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attempt")
