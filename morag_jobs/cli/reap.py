"""``morag-jobs reap``: one pass of the reaper."""

from __future__ import annotations

from typing import Annotated

import typer

from morag_jobs.cli._common import DatabaseOption, fail, open_store
from morag_jobs.handler import ProgressHandler
from morag_jobs.reaper import DEFAULT_TIMEOUT, reap_pass
from morag_jobs.webhook_outbox import attach_outbox

TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", "-t", min=0.001,
                 help="Seconds without a heartbeat after which a running job is reaped."),
]
RedeliveryTimeoutOption = Annotated[
    float | None,
    typer.Option("--redelivery-timeout", min=0.001, show_default="MORAG_REDELIVERY_TIMEOUT or 600",
                 help="Seconds a reaped job whose task Celery will deliver again waits for "
                      "it before it is failed."),
]


def reap(
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    redelivery_timeout: RedeliveryTimeoutOption = None,
    database: DatabaseOption = None,
) -> None:
    """Fail running jobs whose worker went silent (or requeue those Celery will deliver
    again), and fail requeued jobs whose delivery never came."""
    store = open_store(database)
    handler = attach_outbox(ProgressHandler(store, auto_create_jobs=False))
    try:
        done = reap_pass(handler, timeout, redelivery_timeout=redelivery_timeout)
    except Exception as error:  # one clear line instead of a traceback
        fail(f"reaper failed: {error}")
    finally:
        handler.close()
        store.close()
    if not done.ran:
        typer.echo("another process is running a reaper pass; nothing done", err=True)
        return
    for job in done.reaped:
        typer.echo(f"{job.id}\t{job.status.value}\t{job.summary}")
    typer.echo(f"{len(done.reaped)} job(s) reaped", err=True)
