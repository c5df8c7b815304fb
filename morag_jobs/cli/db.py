"""``morag-jobs db``: the job table's schema."""

from __future__ import annotations

import typer

from morag_jobs.cli._common import EXIT_USAGE, DatabaseOption, fail
from morag_jobs.errors import MoragJobsError
from morag_jobs.store import upgrade_database

app = typer.Typer(help="Manage the job table's schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(database: DatabaseOption = None) -> None:
    """Migrate the job database to the newest schema (safe to repeat); a new SQLite file
    is created. The revision is kept in morag_jobs_alembic_version, so another
    application's Alembic (alembic_version) in the same database is left alone."""
    try:
        upgrade_database(database)
    except MoragJobsError as error:  # unreachable, a driver not installed, an unknown revision
        fail(str(error))
    except ValueError as error:  # not a database URL
        fail(str(error), EXIT_USAGE)
    typer.echo("job database is at the newest schema")
