"""Helpers shared by the CLI commands: one-line errors and reading inputs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, BinaryIO, NoReturn

import typer

from morag_jobs.errors import MoragJobsError
from morag_jobs.store import JobStore

_COMMAND: ContextVar[str] = ContextVar("morag_jobs_command", default="")
"""The running command (``list``, ``keys list``), noted as its --database is parsed."""


def _note_command(context: typer.Context, value: str | None) -> str | None:
    names: list[str] = []
    while context.parent is not None:  # the root is the program, not a command
        names.append(context.info_name or "")
        context = context.parent
    _COMMAND.set(" ".join(reversed(names)))
    return value


DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", "-d", envvar="MORAG_DATABASE_URL", callback=_note_command,
                 help="Job database URL (default: MORAG_DATABASE_URL or sqlite:///morag_jobs.db)."),
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
CHUNK_BYTES = 1 << 20
READING_COMMANDS = frozenset({"status", "list", "history", "keys list", "webhooks list",
                              "webhooks deliveries"})
"""The commands that only read: they never create a database (``open_store(create=None)``)."""
NO_DATABASE_HINT = "set MORAG_DATABASE_URL or pass --database"


def open_store(database: str | None, *, create: bool | None = None) -> JobStore:
    """The job store at ``database``, or one clear line and exit 1 when it is unusable.

    ``create=True`` (the commands that write) creates and migrates a new SQLite file as
    the library does. ``create=False`` never creates anything: a SQLite file that does
    not exist is ``no job database at ...``, and the database read is named on stderr
    (on a terminal, or always when it is the default one). ``None``: False for the
    commands in ``READING_COMMANDS``, True for the others.
    """
    if create is None:
        create = _COMMAND.get() not in READING_COMMANDS
    try:
        store = JobStore(database, migrate=None if create else False)
        if not create:
            _check_exists(store)
            _name_the_database(store, default=database is None)
        store.ensure_ready()  # reachable and migrated, without counting a big table
    except (MoragJobsError, ValueError) as error:
        fail(str(error))
    return store


def _check_exists(store: JobStore) -> None:
    if store.exists():
        return
    path = store.sqlite_file
    # morag_jobs.db reads as a word; ./morag_jobs.db as a file.
    shown = str(path) if path is None or path.is_absolute() else f"./{path}"
    fail(f"no job database at {shown} ({NO_DATABASE_HINT})")


def _name_the_database(store: JobStore, *, default: bool) -> None:
    """Say which database is read (password masked): always for the default one, which
    nobody chose, and to a person at a terminal; a script's stderr stays quiet."""
    if default:
        typer.echo(f"database: {store.url} (the default; {NO_DATABASE_HINT})", err=True)
    elif sys.stderr.isatty():
        typer.echo(f"database: {store.url}", err=True)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print one clear line on stderr and exit with ``code``."""
    typer.echo(f"morag-jobs: {message}", err=True)
    raise typer.Exit(code)


def read_blocks(source: BinaryIO) -> Iterator[bytes]:
    """Blocks of whole lines; a partial last line waits for the rest of its bytes."""
    pending = b""
    while block := source.read(CHUNK_BYTES):
        block = pending + block
        cut = block.rfind(b"\n") + 1
        pending = block[cut:]
        if cut:
            yield block[:cut]
    if pending:
        yield pending


def open_input(name: str) -> BinaryIO:
    """``-`` is standard input; anything else a file, with a one-line error if unreadable."""
    if name == "-":
        return sys.stdin.buffer
    try:
        return Path(name).open("rb")
    except OSError as error:
        fail(f"cannot read {name}: {error.strerror}", EXIT_USAGE)
