"""Progress from inside a task: ``report_progress``, ``progress_callback``, ``stage``.

A task never passes its job id around: the worker plugin sets a context variable
around every task, and these functions find their job there (seed 000's fix of
``report_progress(task_id, ...)``). A call is an in-process update of the task's
latest state, with no database or broker round trip; the process's runtime turns
the latest state into a ``ProgressEvent`` once per coalescing interval.

Nothing here knows Celery: an adapter for any task framework binds a ``JobContext``
around each task (``bind``/``unbind``) and reads the running one with ``current()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from morag_jobs.errors import InvalidProgress, JobCancelled, NoJobContext
from morag_jobs.events import ProgressEvent

if TYPE_CHECKING:
    from morag_jobs.parser import ProgressEventParser

__all__ = [
    "JobContext",
    "JobRuntime",
    "Stage",
    "bind",
    "current",
    "current_context",
    "get_current_job_id",
    "is_cancelled",
    "progress_callback",
    "report_progress",
    "stage",
    "unbind",
]

State = tuple[float | None, int | None, int | None, str, str | None]
"""percent, current, total, message, stage: the latest progress a task reported."""

_NO_JOB = (
    "no job here: report_progress(), progress_callback() and stage() work inside a Celery "
    "task run by a worker whose app was set up with morag_jobs.celery.install(app), or "
    "inside `with morag_jobs.task.job_context(job_id):`"
)
_EMPTY: State = (None, None, None, "", None)


class JobRuntime(Protocol):
    """What a context needs of the process's runtime (``morag_jobs.task.runtime.Runtime``)."""

    @property
    def parser(self) -> ProgressEventParser:
        """The process's one parser, for the log tap and ``run_with_progress``."""

    def fail(self, context: JobContext, message: str) -> None:
        """Mark the context's job FAILED now (a ``with stage`` block raised)."""

    def has_stage_plan(self, context: JobContext) -> bool:
        """Whether the context's job has a stage plan."""


class JobContext:
    """The job a running task reports to, and the latest state it reported."""

    __slots__ = ("attempt", "cancelled", "dirty", "event", "has_plan", "job_id", "known",
                 "log_stream", "runtime", "stages", "state", "task_id", "token")

    def __init__(self, job_id: str, task_id: str | None, runtime: JobRuntime) -> None:
        self.job_id = job_id
        self.task_id = task_id
        self.runtime = runtime
        self.state: State = _EMPTY
        # The parsed event behind ``state`` when a log line or a subprocess reported last:
        # handed over as it is, so its source, timestamp and format reach the history.
        self.event: ProgressEvent | None = None
        self.dirty = False
        self.known = False
        self.stages: list[Stage] = []
        self.token: object = None
        self.has_plan: bool | None = None
        # The task's own log lines, read as one stream (state across lines, outer bars);
        # made by the log tap on the first line, gone with the task.
        self.log_stream: Any = None
        # Why the task must stop (its job was cancelled or ended elsewhere), set by the
        # runtime's flusher from the rows it writes; the next report raises JobCancelled.
        self.cancelled: str | None = None
        # The attempt this run of the task is (set when the worker starts it): its events
        # carry it, and the job refuses them once a newer attempt took over.
        self.attempt: int | None = None

    def take(self) -> ProgressEvent | None:
        """The state reported since the last take, as an event (None when nothing new)."""
        if not self.dirty:
            return None
        self.dirty = False
        self.known = True
        if self.event is not None:
            return self.event if self.attempt is None else replace(self.event,
                                                                   attempt=self.attempt)
        percent, current, total, message, stage_name = self.state
        return ProgressEvent(percent=percent, current=current, total=total, message=message,
                             stage=stage_name, task_id=self.task_id, source="callback",
                             attempt=self.attempt)

    def report_event(self, event: ProgressEvent) -> None:
        """Fold a parsed event (log tap, subprocess output) into the latest state."""
        if event.percent is None and event.current is None:
            return
        old = self.state
        if event.percent is not None and old[0] is not None and event.percent < old[0] \
                and (event.stage or old[4]) == old[4]:
            # A lower figure in the same stage (a tool's next phase restarting at 0%) is
            # one the handler refuses once the higher one is written; folding it in here
            # would let a write that happens to fall between them lose the higher one.
            return
        self.state = (event.percent, event.current, event.total,
                      event.message or old[3], event.stage or old[4])
        self.event = replace(event, message=self.state[3], stage=self.state[4],
                             task_id=self.task_id, job_id=None)
        self.dirty = True


_CURRENT: ContextVar[JobContext | None] = ContextVar("morag_job", default=None)

current: Callable[[], JobContext | None] = _CURRENT.get
"""The running task's ``JobContext``, or None outside a job (the context variable's own
``get``: the log tap calls it on every record)."""


def report_progress(
    percent: float | None = None,
    *,
    current: int | None = None,
    total: int | None = None,
    message: str | None = None,
    stage: str | None = None,
) -> None:
    """Report the current task's progress: ``percent`` (0-100), or ``current``/``total``.

    ``stage`` makes ``percent`` relative to that stage of the job's stage plan. What is
    left out keeps its last value (a message-only call keeps the percentage). Raises
    ``NoJobContext`` outside a job and ``InvalidProgress`` for NaN, infinity or < 0.
    """
    context = _CURRENT.get()
    if context is None:
        raise NoJobContext(_NO_JOB)
    if context.cancelled is not None:
        raise JobCancelled(context.job_id, context.cancelled)
    if percent is not None:
        if percent.__class__ is not float:
            percent = _as_float(percent)
        if not 0.0 <= percent < math.inf:  # also refuses NaN
            raise InvalidProgress(percent, "a percentage must be finite and not negative")
    old = context.state
    same_stage = stage is None or stage == old[4]
    if percent is None and current is None and same_stage:
        percent, current, total = old[0], old[1], old[2]
    if message is None:  # a new stage does not inherit the last stage's message
        message = old[3] if same_stage else ""
    context.state = (percent, current, total, message, old[4] if stage is None else stage)
    context.event = None
    context.dirty = True


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidProgress(value, "a percentage must be a number")
    return float(value)


def progress_callback(stage: str | None = None) -> Callable[..., None]:
    """A ``callback(progress, message=None)`` with ``progress`` in 0..1, for library code.

    The seed's callback signature: pass it to code that knows nothing of Celery. With
    ``stage``, the fraction is of that stage's band in the job's stage plan (for
    ``processing = 10..70``, 0.5 is 40% overall: the seed's ``10 + progress * 60``).
    """
    context = _CURRENT.get()
    if context is None:
        raise NoJobContext(_NO_JOB)

    def callback(progress: float, message: str | None = None) -> None:
        fraction = _as_float(progress) if progress.__class__ is not float else progress
        if not 0.0 <= fraction < math.inf:
            raise InvalidProgress(progress, "progress must be a finite fraction >= 0")
        token = _CURRENT.set(context)  # also works from threads the task starts
        try:
            report_progress(fraction * 100.0, message=message, stage=stage)
        finally:
            _CURRENT.reset(token)

    return callback


def is_cancelled() -> bool:
    """Whether the running task's job was cancelled (or ended elsewhere): for code that
    prefers to check rather than be stopped by ``JobCancelled`` at its next report. No
    query: the flusher learns it from the job's writes and heartbeats."""
    context = _CURRENT.get()
    return context is not None and context.cancelled is not None


def get_current_job_id() -> str | None:
    """The job id of the running task, or None outside a job."""
    context = _CURRENT.get()
    return context.job_id if context is not None else None


def current_context() -> JobContext:
    """The running task's ``JobContext``; raises ``NoJobContext`` outside a job."""
    context = _CURRENT.get()
    if context is None:
        raise NoJobContext(_NO_JOB)
    return context


def bind(context: JobContext | None) -> object:
    """Set the current job context (the worker plugin's hook); returns a reset token."""
    return _CURRENT.set(context)


def unbind(token: object) -> None:
    _CURRENT.reset(token)  # type: ignore[arg-type]


class Stage:
    """A ``with stage(...)`` block: progress within one stage, nestable (seed 003).

    At the top level the name is a stage of the job's plan and the block's progress is
    relative to that stage's band. A nested block is one step of its parent: with the
    parent's ``total`` set, the child's fraction fills the parent's current step, and
    the child's completion counts the step done. On exit the stage is complete; an
    exception marks the stage and the job failed with the error and propagates.
    """

    def __init__(self, name: str, *, total: int | None = None) -> None:
        self.name = name
        self.total = total
        self.current = 0
        self.percent: float | None = None
        self.message: str | None = None
        self.error: str | None = None
        self.done = False
        self._context: JobContext | None = None
        self._child: Stage | None = None

    def __enter__(self) -> Stage:
        context = current_context()
        self._context = context
        if context.stages:
            context.stages[-1]._child = self
        context.stages.append(self)
        self._report()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        context = self._context
        assert context is not None, "Stage.__exit__ without __enter__"
        context.stages.pop()
        parent = context.stages[-1] if context.stages else None
        if parent is not None:
            parent._child = None
        if isinstance(error, JobCancelled):
            return  # the job ended elsewhere: nothing failed here, the task just stops
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
            path = "/".join([s.name for s in context.stages] + [self.name])
            context.runtime.fail(context, f"stage {path} failed: {self.error}")
            return
        self.done = True
        if parent is not None and parent.total is not None:
            parent.current = min(parent.current + 1, parent.total)
        (parent or self)._report()

    def update(
        self, *, current: int | None = None, total: int | None = None,
        message: str | None = None, percent: float | None = None,
    ) -> None:
        """Set this stage's position: ``current``/``total`` steps or a ``percent`` of it."""
        if total is not None:
            self.total = total
        if current is not None:
            self.current = current
        if percent is not None:
            self.percent = percent
        if message is not None:
            self.message = message
        self._report()

    def increment(self, steps: int = 1, *, message: str | None = None) -> None:
        """One (or ``steps``) more step done."""
        self.update(current=self.current + steps, message=message)

    def fraction(self) -> float:
        """How far this stage is, 0..1, counting the running child's share of its step."""
        if self.done:
            return 1.0
        if self.percent is not None:
            return min(max(self.percent / 100.0, 0.0), 1.0)
        if not self.total:
            return 0.0
        child = self._child.fraction() if self._child is not None else 0.0
        return min((self.current + child) / self.total, 1.0)

    def _report(self) -> None:
        context = self._context
        if context is None:
            return
        top = context.stages[0] if context.stages else self
        message = self.message or next(
            (s.message for s in reversed(context.stages) if s.message), None)
        # Without a stage plan a stage's share of the job is unknown: finishing the first
        # block is not the job at 100%. Such jobs get the stage name and message only.
        percent = top.fraction() * 100.0 if context.runtime.has_stage_plan(context) else None
        token = _CURRENT.set(context)
        try:
            report_progress(percent, stage=top.name, message=message)
        finally:
            _CURRENT.reset(token)


def stage(name: str, *, total: int | None = None) -> Stage:
    """``with stage("transcription", total=len(segments)) as st: ... st.increment()``."""
    return Stage(name, total=total)
