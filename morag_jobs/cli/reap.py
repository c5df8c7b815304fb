"""``morag-jobs reap``: one pass of the reaper."""

from __future__ import annotations

from typing import Annotated

import typer

from morag_jobs.cli._common import DatabaseOption, fail, open_store
from morag_jobs.reaper import reap as reap_jobs

TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", "-t", min=0.001,
                 help="Seconds without a heartbeat after which a running job is reaped."),
]


def reap(timeout: TimeoutOption = 120.0, database: DatabaseOption = None) -> None:
    """Fail (or requeue, for acks_late tasks) running jobs whose worker went silent."""
    store = open_store(database)
    try:
        reaped = reap_jobs(store, timeout)
    except Exception as error:  # one clear line instead of a traceback
        fail(f"reaper failed: {error}")
    finally:
        store.close()
    for job in reaped:
        typer.echo(f"{job.id}\t{job.status.value}\t{job.summary}")
    typer.echo(f"{len(reaped)} job(s) reaped", err=True)
