"""``morag-jobs db``: the job table's schema."""

from __future__ import annotations

import typer

from morag_jobs.cli._common import DatabaseOption, fail
from morag_jobs.errors import StoreUnavailable
from morag_jobs.store import upgrade_database

app = typer.Typer(help="Manage the job table's schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(database: DatabaseOption = None) -> None:
    """Migrate the job database to the newest schema (safe to repeat)."""
    try:
        upgrade_database(database)
    except StoreUnavailable as error:
        fail(str(error))
    typer.echo("job database is at the newest schema")
