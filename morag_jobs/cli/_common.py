"""Helpers shared by the CLI commands: one-line errors and reading inputs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO, NoReturn

import typer

from morag_jobs.errors import StoreUnavailable
from morag_jobs.store import JobStore

DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", "-d", envvar="MORAG_DATABASE_URL",
                 help="Job database URL (default: MORAG_DATABASE_URL or sqlite:///morag_jobs.db)."),
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
CHUNK_BYTES = 1 << 20


def open_store(database: str | None) -> JobStore:
    """The job store at ``database``, or one clear line and exit 1 when it is unreachable."""
    try:
        store = JobStore(database)
        store.count_jobs()
    except (StoreUnavailable, ValueError) as error:
        fail(str(error))
    return store


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
