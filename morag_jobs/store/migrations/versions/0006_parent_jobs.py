"""Parent jobs: a Celery canvas (group, chain, chord) is one job with one child per task.

A child names its parent (``parent_id``) and its ``weight``; the parent keeps running sums
of its children (``progress_sum`` = sum of weight x percentage, ``children_weight``,
``children``, ``children_done``, ``children_failed``), updated in the transaction of every
child write, so reading a parent of 10,000 children is one row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTERS = (("children", sa.Integer(), "0"), ("children_done", sa.Integer(), "0"),
             ("children_failed", sa.Integer(), "0"), ("children_weight", sa.Float(), "0"),
             ("progress_sum", sa.Float(), "0"))


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
        for name, kind, default in _COUNTERS:
            batch.add_column(sa.Column(name, kind, nullable=False, server_default=default))
        batch.create_foreign_key(op.f("fk_jobs_parent_id_jobs"), "jobs", ["parent_id"], ["id"],
                                 ondelete="CASCADE")
        batch.create_index(op.f("ix_jobs_parent_id"), ["parent_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_parent_id"))
        batch.drop_constraint(op.f("fk_jobs_parent_id_jobs"), type_="foreignkey")
        for name, _, _ in reversed(_COUNTERS):
            batch.drop_column(name)
        batch.drop_column("weight")
        batch.drop_column("parent_id")
