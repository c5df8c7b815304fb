"""``morag-jobs webhooks``: endpoints per job type, the delivery log, and a deliverer."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from morag_jobs import settings
from morag_jobs import webhooks as wh
from morag_jobs.cli._common import EXIT_USAGE, DatabaseOption, fail, open_store
from morag_jobs.errors import StoreUnavailable
from morag_jobs.store import JobStore

app = typer.Typer(help="Completion webhooks: endpoints, deliveries, secret.",
                  no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


@contextmanager
def _store(database: str | None) -> Iterator[JobStore]:
    """The job store; an unreachable database or a bad value is one line and an exit code."""
    try:
        with open_store(database) as store:  # a reading command never creates a database
            yield store
    except StoreUnavailable as error:
        fail(str(error))
    except ValueError as error:
        fail(str(error), EXIT_USAGE)


@app.command("add")
def add(
    job_type: Annotated[str, typer.Argument(help="Every job of this type ...")],
    url: Annotated[str, typer.Argument(help="... is POSTed to this http(s) URL when it ends.")],
    database: DatabaseOption = None,
) -> None:
    """Send the end of every JOB_TYPE job to URL (prints the endpoint's id)."""
    with _store(database) as store:
        endpoint = wh.register_endpoint(store, job_type, url)
    typer.echo(f"{endpoint.id}\t{endpoint.job_type}\t{endpoint.url}")


@app.command("list")
def list_(
    job_type: Annotated[str | None, typer.Option("--type", help="Only this job type.")] = None,
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """The endpoints registered per job type (id, job type, URL)."""
    with _store(database) as store:
        endpoints = wh.list_endpoints(store, job_type)
    for endpoint in endpoints:
        typer.echo(json.dumps(endpoint.to_dict()) if as_json
                   else f"{endpoint.id}\t{endpoint.job_type}\t{endpoint.url}")


@app.command("remove")
def remove(
    endpoint_id: Annotated[int, typer.Argument(help="The id `webhooks add` printed.")],
    database: DatabaseOption = None,
) -> None:
    """Stop sending to an endpoint (messages already queued still go out)."""
    with _store(database) as store:
        removed = wh.remove_endpoint(store, endpoint_id)
    if not removed:
        fail(f"no webhook endpoint with id {endpoint_id}")
    typer.echo(f"removed endpoint {endpoint_id}")


@app.command("deliveries")
def deliveries(
    job: Annotated[str | None, typer.Option("--job", help="Only this job's deliveries.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, delivered or failed.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """The delivery log, newest first: status, attempts, URL and the last error."""
    with _store(database) as store:
        rows = wh.list_deliveries(store, job_id=job, status=status, limit=limit)
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row.to_dict()))
            continue
        outcome = row.last_error or (f"HTTP {row.response_status}" if row.response_status else "")
        typer.echo(f"{row.id}\t{row.job_id}\t{row.event_type}\t{row.status}\t"
                   f"{row.attempts}\t{row.url}\t{outcome}")


@app.command("secret")
def secret() -> None:
    """Print a new random signing secret for MORAG_WEBHOOK_SECRET."""
    typer.echo(wh.generate_secret())


@app.command("deliver")
def deliver(
    once: Annotated[bool, typer.Option("--once", help="One pass over what is due, then exit.")]
    = False,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between polls.")]
    = 1.0,
    database: DatabaseOption = None,
) -> None:
    """Deliver queued webhooks (signed with MORAG_WEBHOOK_SECRET) until interrupted."""
    if settings.webhook_secret() is None:
        fail("set MORAG_WEBHOOK_SECRET first (make one with `morag-jobs webhooks secret`)",
             EXIT_USAGE)
    with _store(database) as store:
        deliverer = wh.WebhookDeliverer(store, poll_interval=interval)
        if once:
            typer.echo(f"{deliverer.deliver_due()} deliveries attempted")
            deliverer.stop()
            return
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        deliverer.start()
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            deliverer.stop()
