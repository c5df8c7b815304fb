"""``morag-jobs parse``: show the progress events a log holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from morag_jobs.cli._common import open_input, read_blocks
from morag_jobs.errors import PatternPackError
from morag_jobs.events import ProgressEvent
from morag_jobs.parser import ProgressEventParser


def parse(
    files: Annotated[list[str], typer.Argument(help="Log files to read; '-' reads stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    patterns: Annotated[
        list[str] | None,
        typer.Option("--patterns", help="Extra directory of *.toml pattern packs."),
    ] = None,
) -> None:
    """Print the progress events found in FILES, then a summary on stderr."""
    try:
        parser = ProgressEventParser(patterns or ())
    except PatternPackError as error:
        typer.echo(f"morag-jobs: {error}", err=True)
        raise typer.Exit(2) from None
    for name in files:
        source = open_input(name)
        try:
            for block in read_blocks(source):
                for event in parser.parse_chunk(block):
                    typer.echo(json.dumps(event.to_dict()) if as_json else _describe(event))
        finally:
            if name != "-":
                source.close()
    stats = parser.stats
    typer.echo(
        f"{stats.lines} lines read, {stats.events} events, {stats.skipped} skipped "
        f"({stats.no_match} without progress, {stats.rejected} rejected, "
        f"{stats.malformed} malformed)",
        err=True,
    )


def _describe(event: ProgressEvent) -> str:
    percent = f"{event.percent:6.2f}%" if event.percent is not None else "     -%"
    count = f" {event.current}/{event.total or '?'}" if event.current is not None else ""
    stage = f" [{event.stage}]" if event.stage else ""
    task = f" task={event.task_id}" if event.task_id else ""
    return (
        f"{event.timestamp.isoformat()} {percent}{count}{stage} {event.message}"
        f"  ({event.format}{task})"
    ).rstrip()
