"""A task whose job was cancelled stops as a REVOKED task, not a FAILURE.

``JobCancelled`` is a ``BaseException`` so that the task's own ``except Exception`` does not
swallow it; Celery's tracer, though, re-raises any ``BaseException`` that is not its own,
which would take the pool process down with it. So every task of an app with the plugin
runs through a ``__call__`` that turns ``JobCancelled`` into what Celery does for a
revoked task: the result backend holds REVOKED (``TaskRevokedError``), and the run ends
as ignored (``celery.exceptions.Ignore``), with no FAILURE and no retry.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore

from morag_jobs.errors import JobCancelled
from morag_jobs.logs import get_logger

__all__ = ["make_cancellable"]

log = get_logger(__name__)
_MARK = "_morag_cancellable"


def make_cancellable(app: Celery) -> None:
    """Let ``JobCancelled`` stop ``app``'s tasks cleanly: those made from now on (the app's
    Task class), those already made, and those made when the app is finalized."""
    _patch(app.Task)

    def patch_all(sender: Celery | None = None, **_: Any) -> None:
        for task in list((sender or app).tasks.values()):
            if getattr(task, "app", None) is app:
                _patch(type(task))

    patch_all()
    app.on_after_finalize.connect(patch_all, weak=False)


def _patch(cls: type[Task]) -> None:
    """Wrap ``cls.__call__`` (once; a subclass overriding it is wrapped on its own)."""
    if getattr(cls.__call__, _MARK, False):
        return
    original = cls.__call__

    def __call__(self: Task, *args: Any, **kwargs: Any) -> Any:  # noqa: N807 - Celery's hook
        try:
            return original(self, *args, **kwargs)
        except JobCancelled as cancelled:
            _revoked(self, cancelled)
            raise Ignore(str(cancelled)) from None

    setattr(__call__, _MARK, True)
    __call__.__qualname__ = f"{cls.__qualname__}.__call__"
    cls.__call__ = __call__  # type: ignore[method-assign]


def _revoked(task: Task, cancelled: JobCancelled) -> None:
    request = task.request
    if request is None or request.id is None or request.called_directly:
        return
    if cancelled.reason.startswith("superseded"):
        # A newer delivery of the same task runs elsewhere: its state in the backend is
        # that run's to write, not this stale one's.
        log.warning("task stopped: a newer attempt of its job runs elsewhere",
                    task_id=request.id, job_id=cancelled.job_id, reason=cancelled.reason)
        return
    try:
        task.backend.mark_as_revoked(request.id, str(cancelled), request=request)
    except Exception:  # the job table is the record; the backend is best effort
        log.warning("could not mark the cancelled task REVOKED", task_id=request.id,
                    exc_info=True)
    log.info("task stopped: its job was cancelled", task_id=request.id, job_id=cancelled.job_id,
             reason=cancelled.reason)
