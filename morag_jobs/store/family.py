"""Parent jobs and their children: one row per parent, kept current by every child write.

A Celery canvas (group, chain, chord) is one parent job with one child job per task. The
parent holds running sums of its children (``progress_sum``, ``children_done``,
``children_failed``); a child's write adds its change to them in the same transaction
(``parent_update``: one ``UPDATE ... SET x = x + :d``), so the parent's percentage, the
weighted mean of its children, costs O(1) per child write and one row to read, and
children written at once by several workers never lose each other's changes: the
database serializes the increments on the parent's row.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from morag_jobs.events import utc_now
from morag_jobs.store import queries as q
from morag_jobs.store.jobs import JobStore
from morag_jobs.store.parents import TERMINAL
from morag_jobs.store.records import Job, JobStatus

__all__ = ["Family"]


class Family:
    """Parents and children in ``store``'s database."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def create(
        self, parent: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
    ) -> tuple[Job, list[Job]]:
        """A PENDING parent and its PENDING children (``create_job``'s fields each, a
        ``weight`` too), in one transaction: a canvas of 10,000 tasks is one insert."""
        if not children:
            raise ValueError("a parent job needs at least one child")
        now = utc_now()
        weights = [float(child.get("weight", 1.0)) for child in children]
        if any(not 0 < weight < float("inf") for weight in weights):
            raise ValueError(f"child weights must be positive numbers, got {weights}")
        head = self.store.create_job(**parent)
        # created_at a microsecond apart: the children list in the canvas's order.
        rows = [
            {**_defaults(now + timedelta(microseconds=index)),
             **{k: v for k, v in child.items() if k not in _OWN},
             "id": child.get("job_id") or uuid.uuid4().hex, "parent_id": head.id,
             "user_id": child.get("user_id", head.user_id),  # the parent's owner reads them
             "weight": weight, "metadata": dict(child.get("metadata") or {})}
            for index, (child, weight) in enumerate(zip(children, weights, strict=True))
        ]
        with self.store._writing() as connection:
            connection.execute(insert(q.JOBS), rows)
            row = connection.execute(
                update(q.JOBS).where(q.JOBS.c.id == head.id)
                .values(children=len(rows), children_weight=sum(weights),
                        version=q.JOBS.c.version + 1)
                .returning(*q.JOBS.c)
            ).one()
        return Job.from_row(row._mapping), self.children(head.id, limit=None)

    def children(
        self, parent_id: str, *, limit: int | None = 100, offset: int = 0,
        running_only: bool = False,
    ) -> list[Job]:
        """A parent's children in the order they were created (the canvas's order)."""
        jobs = q.JOBS.c
        query = q.select_jobs(jobs.parent_id == parent_id)
        if running_only:
            query = query.where(jobs.status.not_in(TERMINAL))
        query = query.order_by(jobs.created_at, jobs.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self.store._reading() as connection:
            return [Job.from_row(row._mapping) for row in connection.execute(query)]

    def mean(self, parent_id: str) -> float | None:
        """The weighted mean of the children's percentages, computed from all of them: what
        the parent's running sum saves on every read (kept for checks and benchmarks)."""
        jobs = q.JOBS.c
        query = select(func.sum(jobs.weight * jobs.percentage) / func.sum(jobs.weight)
                       ).where(jobs.parent_id == parent_id)
        with self.store._reading() as connection:
            value = connection.scalar(query)
        return None if value is None else float(value)


_OWN = frozenset({"job_id", "weight", "metadata", "parent_id"})


def _defaults(now: datetime) -> dict[str, Any]:
    return {"status": JobStatus.PENDING, "percentage": 0.0, "summary": "", "created_at": now,
            "updated_at": now, "version": 0, "ignored_count": 0, "children": 0,
            "children_done": 0, "children_failed": 0, "children_weight": 0.0,
            "progress_sum": 0.0, "attempt": 0}
