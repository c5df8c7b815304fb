"""``morag-jobs parse``: show the progress events a log holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from morag_jobs.cli._common import open_input, read_blocks
from morag_jobs.errors import PatternPackError
from morag_jobs.events import ProgressEvent
from morag_jobs.parser import ProgressEventParser
from morag_jobs.streams import ProgressStream


def parse(
    files: Annotated[list[str], typer.Argument(help="Log files to read; '-' reads stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    patterns: Annotated[
        list[str] | None,
        typer.Option("--patterns", help="Extra directory of *.toml pattern packs."),
    ] = None,
    stream: Annotated[bool, typer.Option(
        "--stream", help="Read each file as one job's output: every redraw, state across "
        "lines, outer bars only (as run_with_progress and tail --job do).")] = False,
    total: Annotated[float | None, typer.Option(
        "--total", min=0, help="With --stream: the count the output counts toward.")] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", min=0, help="With --stream: the media length in seconds.")] = None,
) -> None:
    """Print the progress events found in FILES, then a summary on stderr.

    Each line stands alone by default (a log of many tasks: a redrawn line's last update
    counts); --stream reads a file as the output of one job.
    """
    try:
        parser = ProgressEventParser(patterns or ())
    except PatternPackError as error:
        typer.echo(f"morag-jobs: {error}", err=True)
        raise typer.Exit(2) from None
    if not stream and (total is not None or duration is not None):
        typer.echo("morag-jobs: --total and --duration go with --stream", err=True)
        raise typer.Exit(2)
    updates = 0
    for name in files:
        source = open_input(name)
        progress = ProgressStream(parser, total=total, duration=duration) if stream else None
        try:
            for block in read_blocks(source):
                events = progress.feed(block) if progress else parser.parse_chunk(block)
                _print(events, as_json)
            if progress is not None:
                _print(progress.close(), as_json)
                updates += progress.stats.updates
        finally:
            if name != "-":
                source.close()
    if stream:
        typer.echo(f"{updates} updates read", err=True)
        return
    stats = parser.stats
    typer.echo(
        f"{stats.lines} lines read, {stats.events} events, {stats.skipped} skipped "
        f"({stats.no_match} without progress, {stats.rejected} rejected, "
        f"{stats.malformed} malformed)",
        err=True,
    )


def _print(events: list[ProgressEvent], as_json: bool) -> None:
    for event in events:
        typer.echo(json.dumps(event.to_dict()) if as_json else _describe(event))


def _describe(event: ProgressEvent) -> str:
    percent = f"{event.percent:6.2f}%" if event.percent is not None else "     -%"
    count = f" {event.current}/{event.total or '?'}" if event.current is not None else ""
    stage = f" [{event.stage}]" if event.stage else ""
    task = f" task={event.task_id}" if event.task_id else ""
    return (
        f"{event.timestamp.isoformat()} {percent}{count}{stage} {event.message}"
        f"  ({event.format}{task})"
    ).rstrip()
