"""``morag-jobs serve``: the HTTP API under uvicorn, and the reaper beside it.

The reaper runs here as well as in every worker so that the jobs of a worker that died
are reaped even while no worker lives; passes across processes take turns.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Annotated, Any
from urllib.parse import unquote_plus

import typer

from morag_jobs import _config
from morag_jobs.cli._common import EXIT_USAGE, DatabaseOption, fail
from morag_jobs.handler import ProgressHandler
from morag_jobs.reaper import DEFAULT_TIMEOUT, Reaper
from morag_jobs.store import JobStore
from morag_jobs.webhook_outbox import attach_outbox

_PARAMETER = re.compile(r"([?&;])([^=&;\s\"]*+)=([^&;\s\"]*+)")


def _redact(text: str) -> str:
    """Every query value whose name decodes to ``access_token`` (``%61ccess_token``,
    ``access%5Ftoken`` too) becomes ``***``: the name is judged after decoding."""

    def mask(match: re.Match[str]) -> str:
        name = unquote_plus(unquote_plus(match.group(2)))
        if name.strip().lower() != "access_token":
            return match.group()
        return f"{match.group(1)}{match.group(2)}=***"

    return _PARAMETER.sub(mask, text) if "=" in text else text


class _RedactTokens(logging.Filter):
    """Access-log lines show ``?access_token=***``: keys never land in log files."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _redact(arg) if isinstance(arg, str) else arg
                for arg in record.args  # type: ignore[union-attr]
            )
        return True


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with ``access_token`` values redacted from access lines."""
    from uvicorn.config import LOGGING_CONFIG  # noqa: PLC0415 (loaded only to serve)

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": _RedactTokens}
    config["handlers"]["access"]["filters"] = ["redact_tokens"]
    return config


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes.", min=1)] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
    write_interval: Annotated[float, typer.Option(
        help="Write each job at most this often (seconds); progress in between is "
             "coalesced, latest wins.", min=0.0)] = _config.WRITE_INTERVAL,
    reaper: Annotated[bool, typer.Option(
        help="Reap the jobs of dead workers from here too (one pass at a time across "
             "servers and workers).")] = True,
    reap_timeout: Annotated[float, typer.Option(
        help="Seconds without a heartbeat after which a running job is reaped.",
        min=0.001)] = DEFAULT_TIMEOUT,
    database: DatabaseOption = None,
) -> None:
    """Serve the HTTP API (remote-worker progress, jobs, streams, metrics) with uvicorn."""
    with _reaping(database, reap_timeout) if reaper else nullcontext():
        _serve(host, port, workers, access_log, write_interval, database)


def _serve(
    host: str, port: int, workers: int, access_log: bool, write_interval: float,
    database: str | None,
) -> None:
    import uvicorn  # noqa: PLC0415 (the server's imports load only for this command)

    from morag_jobs.api import create_app  # noqa: PLC0415 (as above)

    options = {"host": host, "port": port, "access_log": access_log,
               "timeout_graceful_shutdown": 3, "log_config": _log_config()}
    if workers == 1:
        try:
            app = create_app(database_url=database, write_interval=write_interval,
                             freeze_gc=True)
        except ValueError as error:
            fail(str(error), EXIT_USAGE)
        uvicorn.run(app, **options)  # type: ignore[arg-type]
        return
    if database:
        # The worker processes build their app from the environment.
        os.environ["MORAG_DATABASE_URL"] = database
    if write_interval != _config.WRITE_INTERVAL:
        fail("--write-interval is not supported with --workers above 1 yet", EXIT_USAGE)
    uvicorn.run("morag_jobs.api:create_app_from_settings", factory=True, workers=workers,
                **options)  # type: ignore[arg-type]


@contextmanager
def _reaping(database: str | None, timeout: float) -> Iterator[None]:
    """The reaper on a thread of this process (never of uvicorn's worker processes, so one
    ``serve`` is one reaper) for as long as the block runs."""
    try:
        store = JobStore(database)
        handler = attach_outbox(ProgressHandler(store, auto_create_jobs=False))
        running = Reaper(handler, timeout)
    except ValueError as error:  # a bad URL or MORAG_REDELIVERY_TIMEOUT
        fail(str(error), EXIT_USAGE)
    running.start()
    try:
        yield
    finally:
        running.stop(wait=5)
        handler.close()
        store.close()
