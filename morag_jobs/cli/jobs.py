"""``morag-jobs status | list | history | cancel``: the job table from a terminal."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from morag_jobs.cli._common import DatabaseOption, fail, open_store
from morag_jobs.eta import EtaEstimator, describe_remaining
from morag_jobs.events import utc_now
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import Job, JobStatus, JobStore
from morag_jobs.webhook_outbox import attach_outbox

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
EXIT_JOB_ENDED_BADLY = 1


def _console() -> Console:
    """A terminal's own width; when piped, wide enough that ids and messages stay whole."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _require(store: JobStore, job_id: str) -> Job:
    job = store.get_job(job_id)
    if job is None:
        fail(f"no job with id {job_id!r}")
    return job


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


class ProgressCells:
    """A progress bar whose empty cells differ from its filled ones by shape, not only
    colour, so 0% never looks like 100% without colour (NO_COLOR, a pipe, a log file).

    A cell fills only when the job has passed it: 99.9% is not drawn as done.
    """

    FILLED, EMPTY = "█", "░"
    ASCII_FILLED, ASCII_EMPTY = "#", "-"  # terminals that cannot show the blocks

    def __init__(self, percentage: float, width: int = 30) -> None:
        self.percentage = percentage
        self.width = width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = min(self.width, options.max_width)
        filled = min(width, max(0, int(width * self.percentage / 100)))
        full, empty = ((self.ASCII_FILLED, self.ASCII_EMPTY) if options.ascii_only
                       else (self.FILLED, self.EMPTY))
        done = "bar.finished" if self.percentage >= 100 else "bar.complete"
        yield Text.assemble((full * filled, done), (empty * (width - filled), "bar.back"))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(self.width, options.max_width), self.width)


def _eta(eta: EtaEstimator, job: Job, now: datetime) -> timedelta | None:
    """The ETA from the typical stage durations of the job's type and its live rate."""
    return eta.remaining(job, now=now)


def _render(eta: EtaEstimator, job: Job) -> Group:
    now = utc_now()
    rows = Table.grid(padding=(0, 2))
    rows.add_column(style="bold")
    rows.add_column()
    rows.add_row("Job", job.id)
    if job.name or job.job_type:
        rows.add_row("Name", f"{job.name or '-'}  (type {job.job_type or '-'}, "
                             f"user {job.user_id or '-'})")
    rows.add_row("Status", job.status.value)
    if job.stage:
        stage = f"{job.stage}"
        if job.stage_percent is not None:
            stage += f" ({job.stage_percent:.1f}% of the stage)"
        rows.add_row("Stage", stage)
    counts = f" ({job.current}/{job.total})" if job.current is not None and job.total else ""
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressCells(job.percentage),
                Text(f"{job.percentage:.1f}%{counts}"))
    rows.add_row("Progress", bar)
    if job.summary:
        rows.add_row("Message", job.summary)
    if job.children:
        failed = f", {job.children_failed} failed" if job.children_failed else ""
        rows.add_row("Children", f"{job.children_done} of {job.children} ended{failed}")
    if job.parent_id:
        rows.add_row("Parent", job.parent_id)
    if job.error:
        rows.add_row("Error", Text(job.error, style="red"))
    rows.add_row("Updated", _ago(job.updated_at, now))
    left = _eta(eta, job, now)
    if left is not None:
        rows.add_row("ETA", describe_remaining(left))
    return Group(rows)


def _as_json(eta: EtaEstimator, job: Job) -> str:
    data = job.to_dict()
    left = _eta(eta, job, utc_now())
    data["eta_seconds"] = round(left.total_seconds(), 1) if left is not None else None
    return json.dumps(data)


def status(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Redraw until the job ends.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1,
                                            help="Seconds between redraws.")] = 2.0,
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """Show a job: status, stage, progress bar, message, last update, ETA.

    With --watch, exits 0 when the job FINISHED and 1 when it FAILED or was CANCELLED.
    """
    store = open_store(database)
    job = _require(store, job_id)
    eta = EtaEstimator(store)  # one for the command: a --watch reads the prior once a minute
    if not watch:
        if as_json:
            typer.echo(_as_json(eta, job))
        else:
            _console().print(_render(eta, job))
        return
    if as_json:
        while True:
            typer.echo(_as_json(eta, job))
            if job.status.is_terminal:
                break
            time.sleep(interval)
            job = _require(store, job_id)
    else:
        job = _watch_table(eta, job, interval)
    if job.status is not JobStatus.FINISHED:
        raise typer.Exit(EXIT_JOB_ENDED_BADLY)


def _watch_table(eta: EtaEstimator, job: Job, interval: float) -> Job:
    """Redraw the job in place until it ends; without a terminal, print where it ended."""
    console, store = _console(), eta.store
    if not console.is_terminal:  # no redraws into a pipe: the last state, on its own line
        while not job.status.is_terminal:
            time.sleep(interval)
            job = _require(store, job.id)
        console.print(_render(eta, job))
        return job
    with Live(_render(eta, job), console=console, refresh_per_second=4) as live:
        while not job.status.is_terminal:
            time.sleep(interval)
            job = _require(store, job.id)
            live.update(_render(eta, job))
    return job


def list_jobs(
    status_filter: Annotated[str | None, typer.Option("--status", help="PENDING, PROCESSING, "
                                                      "FINISHED, FAILED or CANCELLED.")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Only jobs of this type.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's jobs.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """List jobs, newest first."""
    try:
        wanted = JobStatus.parse(status_filter) if status_filter else None
    except ValueError as error:
        fail(str(error), 2)
    store = open_store(database)
    jobs = store.list_jobs(status=wanted, job_type=job_type, user_id=user, limit=limit)
    if as_json:
        typer.echo(json.dumps([job.to_dict() for job in jobs]))
        return
    _console().print(jobs_table(jobs))


def jobs_table(jobs: list[Job]) -> Table:
    """The job table as the terminal shows it (``list``, and the demo's last word)."""
    table = Table(box=None)
    for name in ("id", "name", "status", "progress", "stage"):
        table.add_column(name, no_wrap=True, justify="right" if name == "progress" else "left")
    table.add_column("message", overflow="fold")
    table.add_column("updated", no_wrap=True)
    now = utc_now()
    for job in jobs:
        table.add_row(job.id, job.name or "", job.status.value, f"{job.percentage:5.1f}%",
                      job.stage or "", (job.summary or "")[:60], _ago(job.updated_at, now))
    return table


def history(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """Show a job's history, oldest first, numbered from 1 (``--json`` keeps each row's id)."""
    store = open_store(database)
    _require(store, job_id)
    events = store.history(job_id)
    if as_json:
        typer.echo(json.dumps([event.to_dict() for event in events]))
        return
    table = Table(box=None)
    for name in ("#", "at", "kind", "status", "progress", "stage"):
        table.add_column(name, no_wrap=True)
    table.add_column("message", overflow="fold")
    table.add_column("source", no_wrap=True)
    for number, event in enumerate(events, start=1):
        table.add_row(str(number), event.at.strftime("%Y-%m-%d %H:%M:%S"), event.kind,
                      event.status.value if event.status else "",
                      f"{event.percentage:.1f}%" if event.percentage is not None else "",
                      event.stage or "", event.message or "", event.source)
    _console().print(table)


def cancel(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    app: Annotated[str | None, typer.Option(
        "--app", help="MODULE:APP of the Celery app, to also revoke (terminate) the task.")] = None,
    database: DatabaseOption = None,
) -> None:
    """Mark a job CANCELLED (and, with --app, revoke its Celery task)."""
    store = open_store(database)
    job = _require(store, job_id)
    if job.status.is_terminal:
        fail(f"job {job_id} already ended ({job.status.value})")
    task_id = job.metadata.get("task_id")
    if app is not None and task_id:
        _celery_app(app).control.revoke(task_id, terminate=True)
    handler = attach_outbox(ProgressHandler(store=store, auto_create_jobs=False))
    try:
        if not handler.handle_job_cancellation(job_id, "cancelled from the command line"):
            fail(f"job {job_id} could not be cancelled (it may have just ended)")
    finally:
        handler.close()
    typer.echo(f"{job_id} CANCELLED" + (f" (task {task_id} revoked)" if app and task_id else ""))


def _celery_app(spec: str) -> Any:
    """The Celery app named as ``celery -A`` takes it (``proj``, ``proj.celery``,
    ``proj.celery:app``), found from the current directory first, as ``celery`` does."""
    from celery import Celery  # noqa: PLC0415 - only --app needs Celery installed
    from celery.app.utils import find_app  # noqa: PLC0415

    try:
        app = find_app(spec)
    except (ImportError, AttributeError) as error:
        fail(f"cannot load Celery app {spec!r}: {error}", 2)
    if not isinstance(app, Celery):
        fail(f"cannot load Celery app {spec!r}: it names a {type(app).__name__}, "
             "not a Celery app", 2)
    return app
