"""The ``morag-jobs`` command: a thin shell over the library (no business rules here).

Exit codes scripts can rely on: 0 success, 1 a failure the command reports (unknown
job, unreachable database, a job that failed), 2 bad arguments or unreadable input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from morag_jobs import __version__
from morag_jobs._extras import missing, require
from morag_jobs.cli import create, db, jobs, keys, parse, reap, serve, tail
from morag_jobs.cli import prune as prune_cli
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


class _Commands(TyperGroup):
    """The root command: typer labels every flag ``<bool>`` in ``--help``, as if it took a
    value (``--watch <bool>``); before any help is drawn, each flag of every command,
    ``--help`` included, loses that label."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        _unlabel_flags(self, ctx)
        return super().get_params(ctx)


def _unlabel_flags(command: Any, ctx: typer.Context) -> None:
    for param in [*command.params, command.get_help_option(ctx)]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # typer shows a metavar in place of the type
    for sub in getattr(command, "commands", {}).values():
        _unlabel_flags(sub, ctx)


app = typer.Typer(
    name="morag-jobs",
    cls=_Commands,
    help="Real job progress for Celery workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("status")(jobs.status)
app.command("list")(jobs.list_jobs)
app.command("history")(jobs.history)
app.command("cancel")(jobs.cancel)
app.command("create")(create.create)
app.command("demo")(_demo())
app.command("parse")(parse.parse)
app.add_typer(db.app, name="db")
app.command("serve")(serve.serve)
app.add_typer(keys.app, name="keys")
app.add_typer(webhooks_cli.app, name="webhooks")
app.command("reap")(reap.reap)
app.command("prune")(prune_cli.prune_command)
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
