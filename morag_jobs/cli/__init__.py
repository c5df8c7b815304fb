"""The ``morag-jobs`` command: a thin shell over the library (no business rules here).

Exit codes scripts can rely on: 0 success, 1 a failure the command reports (unknown
job, unreachable database, a job that failed), 2 bad arguments or unreadable input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from morag_jobs import __version__
from morag_jobs._extras import missing, require
from morag_jobs.cli import db, jobs, keys, parse, reap, serve, tail
from morag_jobs.cli import webhooks as webhooks_cli
from morag_jobs.logs import configure_logging


def _demo() -> Callable[..., None]:
    """The demo command; it runs a worker, the API and a tqdm bar, so it needs every extra."""
    needs = ("celery", "redis", "uvicorn", "fastapi", "tqdm")
    if not missing(*needs):
        from morag_jobs.demo import run as demo  # noqa: PLC0415 (its imports need the extras)

        return demo.demo

    def demo_needs_all() -> None:
        """Run the demo (needs the [all] extra)."""
        require("morag-jobs demo", *needs, extra="all")

    return demo_needs_all


app = typer.Typer(
    name="morag-jobs",
    help="Real job progress for Celery workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("status")(jobs.status)
app.command("list")(jobs.list_jobs)
app.command("history")(jobs.history)
app.command("cancel")(jobs.cancel)
app.command("demo")(_demo())
app.command("parse")(parse.parse)
app.add_typer(db.app, name="db")
app.command("serve")(serve.serve)
app.add_typer(keys.app, name="keys")
app.add_typer(webhooks_cli.app, name="webhooks")
app.command("reap")(reap.reap)
app.command("tail")(tail.tail)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """Real job progress for Celery workers."""
    configure_logging()


def main() -> None:
    """Console-script entry point (``morag-jobs`` and ``python -m morag_jobs``)."""
    app(prog_name="morag-jobs")
