"""``morag-jobs create``: make a job from the shell, e.g. for a remote worker to report on."""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer

from morag_jobs import _config
from morag_jobs.cli._common import EXIT_USAGE, DatabaseOption, fail, open_store
from morag_jobs.errors import JobExists, StoreUnavailable
from morag_jobs.handler import ProgressHandler
from morag_jobs.stages import StagePlan
from morag_jobs.webhook_outbox import attach_outbox


def create(
    name: Annotated[str | None, typer.Option("--name", help="What the job is.")] = None,
    job_type: Annotated[str | None, typer.Option(
        "--type", help="Its type: a stage plan registered for it applies.")] = None,
    worker: Annotated[str | None, typer.Option(
        "--worker", help="Assign it to this remote worker: its key may report on it "
                         "(a worker may hold many jobs).")] = None,
    lease: Annotated[str | None, typer.Option(
        "--lease", metavar="SECONDS|none",
        help="Fail the job when its worker goes this long without a report (renewed by "
             "each report); default none.")] = None,
    stage: Annotated[list[str] | None, typer.Option(
        "--stage", metavar="NAME=START:END",
        help="One stage of its plan, in order, e.g. --stage download=0:10 "
             "--stage processing=10:100.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Whose job it is.")] = None,
    job_id: Annotated[str | None, typer.Option("--id", help="An id of your own.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
    database: DatabaseOption = None,
) -> None:
    """Create a PENDING job and print its id (the last line of stdout)."""
    plan = _plan(stage or [])
    seconds = _lease(lease)
    store = open_store(database)
    handler = attach_outbox(ProgressHandler(store, auto_create_jobs=False))
    try:
        job = handler.create_job(
            name=name, job_type=job_type, user_id=user, stages=plan, job_id=job_id,
            worker_id=worker, claim="remote" if worker else None, lease_seconds=seconds,
        )
    except JobExists:
        fail(f"a job {job_id!r} exists already; choose another --id")
    except (StoreUnavailable, ValueError) as error:
        fail(str(error))
    finally:
        handler.close()
        store.close()
    typer.echo(json.dumps(job.to_dict(), indent=2) if as_json else job.id)


def _plan(stages: list[str]) -> StagePlan | None:
    if not stages:
        return None
    bands: dict[str, tuple[float, float]] = {}
    for text in stages:
        name, _, band = text.partition("=")
        start, _, end = band.partition(":")
        try:
            bands[name.strip()] = (float(start), float(end))
        except ValueError:
            fail(f"--stage {text!r}: write NAME=START:END, e.g. processing=10:70", EXIT_USAGE)
    try:
        return StagePlan(bands)
    except ValueError as error:
        fail(f"--stage: {error}", EXIT_USAGE)


def _lease(text: str | None) -> float | None:
    if text is None or text.strip().lower() == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= _config.MAX_LEASE:
        fail(f"--lease {text!r}: give positive seconds up to {_config.MAX_LEASE:g} (a year) "
             "or 'none'", EXIT_USAGE)
    return seconds
