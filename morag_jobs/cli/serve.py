"""``morag-jobs serve``: the HTTP API under uvicorn."""

from __future__ import annotations

import copy
import logging
import os
import re
from typing import Annotated, Any
from urllib.parse import unquote_plus

import typer

from morag_jobs.cli._common import EXIT_USAGE, DatabaseOption, fail

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
             "coalesced, latest wins.", min=0.0)] = 0.5,
    database: DatabaseOption = None,
) -> None:
    """Serve the HTTP API (remote-worker progress, jobs, streams, metrics) with uvicorn."""
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
    if write_interval != 0.5:
        fail("--write-interval is not supported with --workers above 1 yet", EXIT_USAGE)
    uvicorn.run("morag_jobs.api:create_app_from_settings", factory=True, workers=workers,
                **options)  # type: ignore[arg-type]
