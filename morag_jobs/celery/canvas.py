"""Submitting a Celery canvas (group, chain, chord, nested) as one parent job.

The canvas is frozen first, so every task has its id before anything is sent; the parent
and one child per task (the child's id is its task's id) are made in one transaction;
then the canvas is sent as it is. The worker finds each task's job by its id, and every
child write moves the parent's percentage (the children's weighted mean) in O(1).

Which failures end the canvas: any task inside a chain or a chord (a later step, or the
chord's body, will never run) fails the parent at once, with that task's error; the tasks
of a group (not inside a chain or chord) fail on their own, and the parent fails, "k of n
children failed", once all of them ended.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from celery.canvas import Signature, _chain, _chord, group

from morag_jobs.store import Job
from morag_jobs.store.parents import CANVAS_FATAL
from morag_jobs.task.runtime import Runtime

__all__ = ["is_canvas", "members", "submit_canvas"]


def is_canvas(task: object) -> bool:
    """Whether ``task`` is a group, chain or chord."""
    return isinstance(task, group | _chain | _chord)


def members(canvas: Signature, *, fatal: bool = False) -> Iterator[tuple[Signature, bool]]:
    """Every task signature of a frozen canvas, in order, with whether its failure ends it."""
    if isinstance(canvas, _chord):
        yield from members(canvas.tasks, fatal=True)  # a failed header: no body, ever
        yield from members(canvas.body, fatal=True)
    elif isinstance(canvas, group):
        for task in canvas.tasks:
            yield from members(task, fatal=fatal)
    elif isinstance(canvas, _chain):
        for task in canvas.tasks:
            yield from members(task, fatal=True)
    else:
        yield canvas, fatal


def submit_canvas(
    runtime: Runtime, canvas: Signature, *, fields: Mapping[str, Any],
    weights: Sequence[float] | None, apply_async_options: Mapping[str, Any],
) -> tuple[Job, Any]:
    """Make the parent and its children, then send the canvas; (parent, Celery's result)."""
    canvas.freeze()
    tasks = list(members(canvas))
    if weights is not None and len(weights) != len(tasks):
        raise ValueError(f"weights: {len(weights)} given for a canvas of {len(tasks)} tasks")
    kind = type(canvas).__name__.lstrip("_")
    shared = {"user_id": fields.get("user_id"), "claim": "queued"}
    children = [
        {**shared, "job_id": sig.id, "name": sig.task, "job_type": sig.task,
         "weight": weights[index] if weights is not None else 1.0,
         "metadata": {"task_name": sig.task, "task_id": sig.id, CANVAS_FATAL: fatal}}
        for index, (sig, fatal) in enumerate(tasks)
    ]
    parent = runtime.handler.create_job(
        children=children, **{**fields, "name": fields.get("name") or
                              f"{kind} of {len(tasks)} tasks",
                              "job_type": fields.get("job_type") or kind,
                              "metadata": {**(fields.get("metadata") or {}), "canvas": kind}},
    )
    return parent, canvas.apply_async(**apply_async_options)
