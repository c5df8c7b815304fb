"""Indexes for the real queries at scale (a million jobs, ten million history rows).

Each list the API and the dashboard page through is an index range read in its order,
with ``id`` (every ORDER BY's tie-breaker) last: the newest jobs (``created_at, id``),
by status (``status, created_at, id``), by user (``user_id, created_at, id``), by user
and status, by type with or without a status (``X, status, created_at, id``: the list's
capped total of a filter pair is a range read too); the stream poll, which asks for the
jobs changed since its cursor (``updated_at, id``); a parent's children (``parent_id,
created_at, id``, which the ``ON DELETE CASCADE`` uses too); the reaper's running remote
jobs by lease and the ETA's newest FINISHED jobs of a type (partial indexes, holding only
the rows those queries read).

The indexes the new ones make redundant go: the single-column ones (``created_at``,
``status``, ``user_id``, ``job_type``, ``parent_id``) and ``status, updated_at``. Every job
write updates every index (the write changes ``updated_at``, which is indexed), so an
index no query needs costs on each write.

``CREATE INDEX`` blocks writes to ``jobs`` while it builds (about 18 s at a million jobs
on two cores). To avoid that on a live database, create the indexes beforehand with
``CREATE INDEX CONCURRENTLY`` under the same names (``python bench/explain_bench.py
--print-ddl`` prints the statements): this migration skips indexes that exist.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FINISHED = "status = 'FINISHED'"
_REMOTE_RUNNING = "claim = 'remote' AND status IN ('PENDING', 'PROCESSING')"

# name, columns, partial-index predicate
_NEW: tuple[tuple[str, list[str], str | None], ...] = (
    ("ix_jobs_created_at_id", ["created_at", "id"], None),
    ("ix_jobs_status_created_at_id", ["status", "created_at", "id"], None),
    ("ix_jobs_user_id_created_at_id", ["user_id", "created_at", "id"], None),
    ("ix_jobs_user_id_status_created_at_id", ["user_id", "status", "created_at", "id"], None),
    ("ix_jobs_job_type_status_created_at_id", ["job_type", "status", "created_at", "id"], None),
    ("ix_jobs_updated_at_id", ["updated_at", "id"], None),
    ("ix_jobs_parent_id_created_at_id", ["parent_id", "created_at", "id"], None),
    ("ix_jobs_remote_lease_until", ["lease_until", "id"], _REMOTE_RUNNING),
    ("ix_jobs_finished_job_type_finished_at_id", ["job_type", "finished_at", "id"], _FINISHED),
)
# the indexes of 0001 and 0006 that the new ones make redundant
_OLD: tuple[tuple[str, list[str]], ...] = (
    ("ix_jobs_created_at", ["created_at"]), ("ix_jobs_status", ["status"]),
    ("ix_jobs_user_id", ["user_id"]), ("ix_jobs_job_type", ["job_type"]),
    ("ix_jobs_parent_id", ["parent_id"]), ("ix_jobs_status_updated_at", ["status", "updated_at"]),
)


def upgrade() -> None:
    for name, columns, where in _NEW:
        partial = {} if where is None else {"postgresql_where": sa.text(where),
                                            "sqlite_where": sa.text(where)}
        op.create_index(name, "jobs", columns, if_not_exists=True, **partial)
    for name, _ in _OLD:
        op.drop_index(name, table_name="jobs", if_exists=True)


def downgrade() -> None:
    for name, columns in _OLD:
        op.create_index(name, "jobs", columns, if_not_exists=True)
    for name, _, _ in reversed(_NEW):
        op.drop_index(name, table_name="jobs", if_exists=True)
