"""``morag-jobs prune``: delete ended jobs, their history and settled webhook deliveries."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

from morag_jobs import settings
from morag_jobs.cli._common import EXIT_USAGE, DatabaseOption, fail, open_store
from morag_jobs.errors import MoragJobsError
from morag_jobs.events import utc_now
from morag_jobs.store.prune import ENDED, PruneResult, ended_statuses, prune

OlderThanOption = Annotated[
    str,
    typer.Option("--older-than", metavar="DURATION",
                 help="Delete what ended longer ago than this: 30d, 12h, 90m or seconds "
                      "(3600)."),
]
StatusOption = Annotated[
    str,
    typer.Option("--status", metavar="STATUS[,STATUS]",
                 help="Only jobs that ended so (a parent takes its children along)."),
]
KeepHistoryOption = Annotated[
    bool, typer.Option("--keep-history", help="Delete only those jobs' history; keep the jobs."),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")]
EVERY_ENDED = ",".join(ENDED)


def prune_command(
    older_than: OlderThanOption,
    status: StatusOption = EVERY_ENDED,
    keep_history: KeepHistoryOption = False,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """Delete ended jobs (with their history and mappings; a parent with its children) and
    delivered or failed webhook deliveries, older than --older-than. Running jobs, and the
    children of a running parent, always stay."""
    try:
        keep = settings.parse_duration(older_than)
    except ValueError as error:
        fail(f"--older-than: {error}", EXIT_USAGE)
    try:
        statuses = ended_statuses(name.strip() for name in status.split(",") if name.strip())
    except ValueError as error:
        fail(f"--status: {error}", EXIT_USAGE)
    cutoff = utc_now() - timedelta(seconds=keep)
    store = open_store(database, create=False)  # pruning never creates a database
    try:
        done = prune(store, cutoff, statuses, keep_history=keep_history, dry_run=dry_run)
    except MoragJobsError as error:
        fail(f"prune failed: {error}")
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({**done.to_dict(), "cutoff": cutoff.isoformat()}))
    typer.echo(_summary(done, keep_history), err=True)


def _summary(done: PruneResult, keep_history: bool) -> str:
    verb = "would delete" if done.dry_run else "deleted"
    jobs = "kept the jobs" if keep_history else f"{done.jobs} job(s)"
    return (f"{verb} {jobs}, {done.history} history row(s), "
            f"{done.deliveries} webhook delivery(ies)")
