"""``install(app)``: wire morag-jobs into a Celery app, and ``submit`` jobs to it.

What ``install`` connects:

- signal handlers for the task lifecycle (prerun: PROCESSING; success: FINISHED at
  100%; failure: FAILED with the exception, percentage kept; retry: noted, still
  PROCESSING; revoked: CANCELLED), each setting or clearing the job context that
  ``report_progress`` reads;
- the log tap on the root and task loggers of worker processes;
- a worker bootstep that runs the reaper in the main worker process (``morag-jobs
  serve`` runs one too; a pass is skipped while another process runs one);
- what the app's settings say of a task whose pool process dies: whether Celery will
  deliver it again (``acks_late`` with ``reject_on_worker_lost``, or
  ``retry_on_worker_lost``), recorded on the job for the reaper;
- ``celery worker`` options for the settings an operator changes.

Settings, strongest first: ``install``'s arguments, the ``celery worker`` options,
``app.conf.morag_jobs_*``, ``MORAG_*`` environment variables, defaults.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import PurePath
from typing import Any

import click
from celery import Celery, Task, bootsteps, signals

from morag_jobs.celery.cancel import make_cancellable
from morag_jobs.celery.runtime import Runtime, RuntimeConfig
from morag_jobs.celery.sending import (
    JOB_HEADER,
    JOB_TYPE_HEADER,
    SubmittedJob,
    connect_publisher,
    submit,
)
from morag_jobs.logs import get_logger
from morag_jobs.reaper import Reaper
from morag_jobs.stages import Band, StagePlan, register_stage_plan
from morag_jobs.task.context import JobContext, bind, current, unbind
from morag_jobs.task.logtap import LogTap
from morag_jobs.task.runtime import Runtime as TaskRuntime
from morag_jobs.task.runtime import default_runtime, set_default_runtime

__all__ = ["JOB_HEADER", "JOB_TYPE_HEADER", "SubmittedJob", "install", "submit"]

log = get_logger(__name__)

_OPTIONS = {  # celery worker option -> RuntimeConfig field
    "morag_database": "database_url",
    "morag_interval": "interval",
    "morag_heartbeat": "heartbeat_interval",
    "morag_reap_timeout": "reap_timeout",
    "morag_redelivery_timeout": "redelivery_timeout",
}


def install(
    app: Celery,
    database_url: str | None = None,
    stage_plans: Mapping[str, StagePlan | Mapping[str, Band]] | None = None,
    **settings: Any,
) -> Runtime:
    """Make ``app``'s tasks report progress into the job table; returns the runtime.

    ``settings`` are :class:`RuntimeConfig` fields (``interval``, ``heartbeat_interval``,
    ``celery_progress``, ``log_tap``, ``reap_timeout``...); ``pattern_dirs`` names
    directories of pattern packs for the process's one parser (the log tap's,
    ``progress_processor``'s and ``run_with_progress``'s).
    """
    config = _config(app, database_url, settings)
    runtime = Runtime(config, app=app)
    set_default_runtime(runtime)
    for job_type, plan in (stage_plans or {}).items():
        register_stage_plan(job_type, plan if isinstance(plan, StagePlan) else StagePlan(plan))
    _connect(app, runtime)
    connect_publisher(app, runtime)
    make_cancellable(app)
    app.steps["worker"].add(MoragJobsStep)
    app.user_options["worker"].add(click.Option(["--morag-database"], help="Job database URL."))
    app.user_options["worker"].add(click.Option(
        ["--morag-interval"], type=float, help="Seconds between coalesced progress writes."))
    app.user_options["worker"].add(click.Option(
        ["--morag-heartbeat"], type=float, help="Seconds between heartbeats of running jobs."))
    app.user_options["worker"].add(click.Option(
        ["--morag-reap-timeout"], type=float,
        help="Fail running jobs without a heartbeat for this long (0 disables the reaper)."))
    app.user_options["worker"].add(click.Option(
        ["--morag-redelivery-timeout"], type=float,
        help="Fail a reaped job whose task is not delivered again within this long."))
    return runtime


def _config(app: Celery, database_url: str | None, settings: Mapping[str, Any]) -> RuntimeConfig:
    names = {f.name for f in fields(RuntimeConfig)}
    unknown = set(settings) - names
    if unknown:
        raise TypeError(f"unknown morag-jobs settings {sorted(unknown)}; use {sorted(names)}")
    values = {name: app.conf.get(f"morag_jobs_{name}") for name in names}
    values = {k: v for k, v in values.items() if v is not None}
    values.update({k: v for k, v in settings.items() if v is not None})
    if database_url is not None:
        values["database_url"] = database_url
    dirs = values.get("pattern_dirs")
    if dirs is not None:
        values["pattern_dirs"] = (dirs,) if isinstance(dirs, (str, PurePath)) else tuple(dirs)
    return RuntimeConfig(**values)


class MoragJobsStep(bootsteps.StartStopStep):
    """Applies the worker options and runs the reaper in the main worker process."""

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        runtime = default_runtime()
        chosen = {field: options[opt] for opt, field in _OPTIONS.items()
                  if options.get(opt) is not None}
        if chosen:
            runtime.config = replace(runtime.config, **chosen)
        if isinstance(runtime, Runtime):  # task-progress events: as this worker sends its own
            runtime.attach_worker(parent.hostname, bool(parent.task_events))
        _warm_up(runtime)
        self._reaper: Reaper | None = None

    def start(self, parent: Any) -> None:
        runtime = default_runtime()
        log.info("morag-jobs installed: progress goes to the job table",
                 database=runtime.handler.store.url,
                 reaper=f"{runtime.config.reap_timeout:g}s" if runtime.config.reap_timeout
                 else "off")
        if runtime.config.reap_timeout:
            self._reaper = Reaper(runtime.handler, runtime.config.reap_timeout,
                                  redelivery_timeout=runtime.config.redelivery_timeout)
            self._reaper.start()

    def stop(self, parent: Any) -> None:
        if self._reaper is not None:
            self._reaper.stop()
        default_runtime().close()

    terminate = stop  # a cold shutdown calls terminate(): flush and stop all the same


def _warm_up(runtime: TaskRuntime) -> None:
    """Build the handler and touch the database in the main thread, before the pool forks.

    Otherwise the reaper thread would import the database driver on its first pass; a
    pool child forked during that import inherits the module's import lock held, and
    its first task waits on it forever.
    """
    try:
        runtime.handler.store.ensure_ready()
    except Exception:  # the database may be down at start; the worker still starts
        log.warning("job database not reachable at worker start", exc_info=True)


def _redelivered_if_lost(task: Task) -> bool:
    """Whether Celery sends the task again when the pool process running it dies.

    It acknowledges the message of such a task even with ``acks_late``, unless
    ``reject_on_worker_lost`` is on (then it requeues it); ``retry_on_worker_lost`` (Celery
    5.7) sends a retry instead while retries remain. A task's own attribute wins, else the
    app's ``task_*`` setting. A worker killed whole is another matter (see the README).
    """
    if _task_setting(task, "retry_on_worker_lost"):
        retries = task.request.retries or 0
        return task.max_retries is None or retries < task.max_retries
    return _task_setting(task, "acks_late") and _task_setting(task, "reject_on_worker_lost")


def _task_setting(task: Task, name: str) -> bool:
    value = getattr(task, name, None)
    if value is None:
        value = task.app.conf.get(f"task_{name}")
    return bool(value)


def _job_id(task: Task, task_id: str, runtime: Runtime) -> str:
    request = task.request
    header = request.get(JOB_HEADER) if request is not None else None
    if header:
        return str(header)
    return runtime.handler.mappings.lookup("task", task_id) or task_id


def _connect(app: Celery, runtime: Runtime) -> None:
    """Connect the lifecycle signals; handlers ignore other apps' tasks."""

    def ours(task: Any) -> bool:
        return getattr(task, "app", None) is app

    def on_prerun(task_id: str, task: Task, **_: Any) -> None:
        if not ours(task):
            return
        try:
            context = runtime.begin(_job_id(task, task_id, runtime), task_id)
        except Exception:  # bookkeeping never stops the task: it reports into the void
            log.exception("could not track the task's job", task_id=task_id)
            context = JobContext(task_id, task_id, runtime)
        context.token = bind(context)
        try:
            runtime.start(context, worker=task.request.hostname,
                          redelivery_ok=_redelivered_if_lost(task))
        except Exception:  # bookkeeping never stops the task from running
            log.exception("could not mark job started", job_id=context.job_id)

    def on_success(sender: Task, result: Any = None, **_: Any) -> None:
        context = current()
        if ours(sender) and context is not None:
            # The task's last message stays the job's; its return value is kept if small.
            runtime.complete(context, True, None, result=small_result(result))

    def on_failure(sender: Task, exception: BaseException, **_: Any) -> None:
        context = current()
        if ours(sender) and context is not None:
            runtime.complete(context, False, f"{type(exception).__name__}: {exception}")

    def on_retry(sender: Task, request: Any, reason: Any, **_: Any) -> None:
        context = current()
        if ours(sender) and context is not None:
            runtime.end(context)
            retries = (request.retries or 0) + 1 if request is not None else 1
            runtime.handler.handle_job_retry(context.job_id, f"retry {retries}: {reason}")

    def on_postrun(task: Task, **_: Any) -> None:
        context = current()
        if ours(task) and context is not None:
            runtime.end(context)  # a no-op when success/failure already ended it
            unbind(context.token)

    def on_revoked(sender: Any, request: Any, **_: Any) -> None:
        if request is None or not ours(sender):
            return
        headers = getattr(request, "request_dict", None) or {}
        job_id = headers.get(JOB_HEADER) or runtime.handler.mappings.lookup("task", request.id)
        runtime.handler.handle_job_cancellation(job_id or request.id, "revoked")

    def on_process_shutdown(**_: Any) -> None:
        runtime.close()

    def tap(logger: logging.Logger | None = None, **_: Any) -> None:
        if not runtime.config.log_tap:
            return
        handler = _shared_tap()
        _ = runtime.parser  # built now, in the main process: pool children inherit it
        for target in {logging.getLogger(), logger or logging.getLogger("celery.task")}:
            _hear_info(target)
            if handler not in target.handlers:
                target.addHandler(handler)

    uid = f"morag-jobs-{id(app)}"
    for signal, receiver in [
        (signals.task_prerun, on_prerun), (signals.task_success, on_success),
        (signals.task_failure, on_failure), (signals.task_retry, on_retry),
        (signals.task_postrun, on_postrun), (signals.task_revoked, on_revoked),
        (signals.worker_process_shutdown, on_process_shutdown),
        (signals.after_setup_logger, tap), (signals.after_setup_task_logger, tap),
        (signals.worker_process_init, tap),
    ]:
        signal.connect(receiver, weak=False, dispatch_uid=f"{uid}-{receiver.__name__}")


def _hear_info(logger: logging.Logger) -> None:
    """Let INFO records reach the tap while the console shows what it showed before.

    ``celery worker`` logs at WARNING by default, and a logger drops records below its
    level before any handler sees them, so ``log.info("Processing... 75%")`` would never
    reach the tap. The logger goes to INFO; handlers that had no level of their own get
    the old one, so the worker's output does not change.
    """
    previous = logger.getEffectiveLevel()
    if previous <= logging.INFO:
        return
    for existing in logger.handlers:
        if existing.level == logging.NOTSET:
            existing.setLevel(previous)
    logger.setLevel(logging.INFO)


_tap: LogTap | None = None


def _shared_tap() -> LogTap:
    global _tap  # noqa: PLW0603 - one tap per process, shared by every logger it is on
    if _tap is None:
        _tap = LogTap()
    return _tap


RESULT_LIMIT = 4096
"""Bytes of JSON at most for a task's return value to be kept on its job."""


def small_result(value: Any) -> Any:
    """A task's return value as kept in the job's ``metadata["result"]``: JSON of at most
    ``RESULT_LIMIT`` bytes, else None (the result backend holds the real thing)."""
    if value is None:
        return None
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value if len(text.encode()) <= RESULT_LIMIT else None
