"""``morag-jobs tail``: follow log files and apply their progress to jobs."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from morag_jobs.cli._common import EXIT_USAGE, DatabaseOption, fail, open_store
from morag_jobs.follow import CheckpointError, FollowedEvent, FollowerStats, LogFollower
from morag_jobs.handler import ProgressHandler
from morag_jobs.webhook_outbox import attach_outbox


def tail(
    paths: Annotated[list[Path], typer.Argument(
        help="Log files to follow; they may not exist yet.", show_default=False)],
    job: Annotated[str | None, typer.Option(
        "--job", "-j", help="Apply every line to this job (created if missing).")] = None,
    worker: Annotated[str | None, typer.Option(
        "--worker", "-w", help="Apply every line to the job mapped to this worker.")] = None,
    from_start: Annotated[bool, typer.Option(
        "--from-start", help="Read files from their start, not their end.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c",
        help="Remember here how far each file was read; resume from it on restart.")] = None,
    database: DatabaseOption = None,
    interval: Annotated[float, typer.Option(
        "--interval", "-i", min=0.01, help="Seconds between looks at files with nothing new.")
    ] = 0.25,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", min=0, help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    trust_line_ids: Annotated[bool, typer.Option(
        "--trust-line-ids",
        help="Without --job/--worker: let each line name its job (a JSON job_id, a Celery "
        "task id). Only for a log you own: any line could then move any job.")] = False,
    total: Annotated[float | None, typer.Option(
        "--total", min=0,
        help="With --job: the item or byte count the output counts toward without saying it.")
    ] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", min=0,
        help="With --job: the media length in seconds, for output that prints time= positions.")
    ] = None,
) -> None:
    """Follow PATHS like 'tail -F' (rotation included) and apply their progress to jobs.

    Bind the files to the jobs they may move: --job, --worker, or --trust-line-ids (each
    line names its job: a JSON job_id, or a task id or worker; for logs you own).

    Lines without a job are counted, never guessed. Stops on Ctrl-C, SIGTERM or --max-seconds.
    """
    if job is not None and worker is not None:
        fail("--job and --worker cannot be used together", EXIT_USAGE)
    if trust_line_ids and (job is not None or worker is not None):
        fail("--trust-line-ids is for files not bound with --job or --worker", EXIT_USAGE)
    if job is None and (total is not None or duration is not None):
        fail("--total and --duration describe one job's output: use them with --job", EXIT_USAGE)
    for path in paths:
        if path.is_dir():
            fail(f"cannot follow {path}: it is a directory", EXIT_USAGE)
    store = open_store(database)
    handler = attach_outbox(ProgressHandler(store=store, auto_create_jobs=job is not None))
    try:
        try:
            follower = LogFollower(paths, handler=handler, job_id=job, worker_id=worker,
                                   from_start=from_start, checkpoint=checkpoint,
                                   poll_interval=interval, total=total, duration=duration,
                                   trust_line_ids=trust_line_ids)
        except CheckpointError as error:
            fail(str(error), EXIT_USAGE)
        with follower, _stop_on_signals() as stop:
            for followed in follower.follow(stop, max_seconds):
                if followed.applied:
                    typer.echo(_describe(followed))
    except CheckpointError as error:
        fail(str(error))
    finally:
        handler.close()
        store.close()
    typer.echo(_summary(follower.stats), err=True)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM, so the follower ends its pass and exits cleanly.

    A second signal interrupts at once.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _describe(followed: FollowedEvent) -> str:
    event = followed.event
    percent = f"{event.percent:6.2f}%" if event.percent is not None else "      -"
    count = f" {event.current}/{event.total or '?'}" if event.current is not None else ""
    stage = f" [{event.stage}]" if event.stage else ""
    return f"{followed.job_id}\t{percent}{count}{stage}\t{event.message}".rstrip()


def _summary(stats: FollowerStats) -> str:
    return (
        f"{stats.lines} lines read, {stats.events} events: {stats.applied} applied, "
        f"{stats.no_job} without a job, {stats.refused} refused; "
        f"{stats.rotations} rotations ({stats.truncations} by truncation)"
        + (f"; {stats.untrusted} naming a job not followed (see --trust-line-ids)"
           if stats.untrusted else "")
        + (f"; {stats.already_applied} applied before a restart, skipped"
           if stats.already_applied else "")
        + (f"; LOST {stats.unread_bytes} bytes to {stats.truncated_unread} truncations before "
           "they were read (copytruncate: use delaycompress)" if stats.truncated_unread else "")
    )
