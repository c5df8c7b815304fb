"""Sending tasks: ``submit``, and the job of a task sent the plain way.

Every task an app with the plugin sends shows in the job table from the moment it is
queued: ``submit`` creates its job before sending (with a name, user, plan, metadata,
webhook), and a task sent with ``.delay()``/``apply_async`` gets its job from Celery's
``before_task_publish`` signal (typed by its task name, so a plan registered for that
name applies). The job id travels in the message's headers (``JOB_HEADER``) to the
worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from celery import Celery, Task, signals
from celery.canvas import Signature
from celery.utils import uuid as celery_uuid

from morag_jobs.celery.canvas import is_canvas, submit_canvas
from morag_jobs.celery.runtime import Runtime
from morag_jobs.errors import JobExists, StoreUnavailable
from morag_jobs.logs import get_logger
from morag_jobs.stages import StagePlan
from morag_jobs.store import Job
from morag_jobs.task.runtime import default_runtime
from morag_jobs.webhook_urls import check_url

__all__ = ["JOB_HEADER", "JOB_TYPE_HEADER", "SubmittedJob", "connect_publisher", "submit"]

log = get_logger(__name__)

JOB_HEADER = "morag_job_id"
"""The message header carrying a task's job id to the worker."""


@dataclass(frozen=True, slots=True)
class SubmittedJob(Job):
    """The job ``submit`` created (a ``Job`` as it was at creation) and the task it sent.

    ``async_result`` is Celery's ``AsyncResult`` of the task (``.get()``, ``.state``,
    ``.revoke()``); ``task_id`` is its id (also in ``metadata["task_id"]``).
    """

    async_result: Any = None

    @property
    def task_id(self) -> str:
        return str(self.metadata["task_id"])


def submit(
    task: Task | Signature,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    job_type: str | None = None,
    user_id: str | None = None,
    stages: StagePlan | None = None,
    metadata: Mapping[str, Any] | None = None,
    webhook_url: str | None = None,
    weights: Sequence[float] | None = None,
    **apply_async_options: Any,
) -> SubmittedJob:
    """Create the job (PENDING), then send the task with the job id in its headers.

    Returns the job with Celery's ``AsyncResult`` as ``.async_result``. A task sent the
    plain way (``.delay()``, ``apply_async``) gets its job too, when it is published (see
    ``install``); ``submit`` is for what ``.delay()`` cannot say: a name, a user, a plan,
    metadata, a webhook.

    A Celery ``group``, ``chain`` or ``chord`` (nested too) becomes a parent job with one
    child per task (``weights`` in the canvas's order, equal by default), its percentage
    the children's weighted mean; ``.async_result`` is the canvas's result. A signature
    (``task.s(1, 2)``) is sent with its own arguments and options.

    A ``webhook_url`` that is not absolute http(s) raises ``WebhookURLRefused`` here,
    before anything is created, rather than failing at delivery after the job ended.
    """
    if webhook_url is not None:
        check_url(webhook_url)
    if is_canvas(task):
        assert isinstance(task, Signature)
        fields_ = {"name": name, "job_type": job_type, "user_id": user_id, "stages": stages,
                   "metadata": metadata, "webhook_url": webhook_url}
        parent, sent = submit_canvas(default_runtime(), task, fields=fields_, weights=weights,
                                     apply_async_options=apply_async_options)
        return SubmittedJob(**{f.name: getattr(parent, f.name) for f in fields(Job)},
                            async_result=sent)
    if isinstance(task, Signature):
        return submit(task.type, tuple(task.args), {**task.kwargs, **(kwargs or {})},
                      name=name, job_type=job_type, user_id=user_id, stages=stages,
                      metadata=metadata, webhook_url=webhook_url,
                      **{**task.options, **apply_async_options})
    handler = default_runtime().handler
    task_id = apply_async_options.pop("task_id", None) or celery_uuid()
    job = handler.create_job(
        name=name or task.name, job_type=job_type or task.name, user_id=user_id,
        stages=stages, webhook_url=webhook_url,
        metadata={**(metadata or {}), "task_name": task.name, "task_id": task_id},
        claim="queued",
    )
    handler.mappings.bind("task", task_id, job.id)
    headers = {**apply_async_options.pop("headers", {}), JOB_HEADER: job.id}
    sent = task.apply_async(args, dict(kwargs or {}), task_id=task_id, headers=headers,
                            **apply_async_options)
    values = {f.name: getattr(job, f.name) for f in fields(Job)}
    return SubmittedJob(**values, async_result=sent)


JOB_TYPE_HEADER = "morag_job_type"
"""A header naming the job type of a task sent the plain way (default: the task's name)."""
_INTERNAL_TASKS = "celery."  # chord_unlock, backend_cleanup...: bookkeeping, not jobs


def _created_at_publish(runtime: Runtime, headers: dict[str, Any] | None) -> None:
    """A task is being sent without ``submit``: create its job now (PENDING), so it shows
    from the moment it is queued, typed and planned by its task name.

    The job's id is the task id and goes into the message's headers, so the worker
    finds it. A database that cannot be reached does not stop the task from being sent:
    the worker creates the job at the task's first progress, as before.
    """
    if headers is None or headers.get(JOB_HEADER) or not headers.get("id"):
        return
    task_name = str(headers.get("task") or "")
    if not task_name or task_name.startswith(_INTERNAL_TASKS):
        return
    task_id = str(headers["id"])
    job_type = str(headers.get(JOB_TYPE_HEADER) or task_name)
    try:
        runtime.handler.create_job(
            job_id=task_id, name=task_name, job_type=job_type,
            metadata={"task_name": task_name, "task_id": task_id}, claim="queued",
        )
    except JobExists:
        pass  # published again (a retry, a second installed app): the job is there
    except StoreUnavailable as error:
        log.warning("job not created at publish: database unreachable", task_id=task_id,
                    error=str(error))
        return
    headers[JOB_HEADER] = task_id


def connect_publisher(app: Celery, runtime: Runtime) -> None:
    """Create the job of every task sent from this process without ``submit``."""

    def on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        try:
            _created_at_publish(runtime, headers)
        except Exception:  # publishing a task is never stopped by bookkeeping
            log.exception("could not create the job of a task being sent")

    signals.before_task_publish.connect(on_publish, weak=False,
                                        dispatch_uid=f"morag-jobs-{id(app)}-publish")
