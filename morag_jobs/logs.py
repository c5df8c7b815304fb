"""How morag-jobs logs: through the standard ``logging`` module, under ``morag_jobs.*``.

A library does not decide where its host's logs go. Every module logs through
:func:`get_logger`, a thin keyword-friendly face over ``logging.getLogger(name)``: a call
such as ``log.warning("write failed; retrying", job_id=j, attempt=2)`` becomes one
``LogRecord`` whose message reads ``write failed; retrying job_id=j attempt=2`` and whose
``morag`` attribute holds the fields, for a structured formatter (structlog's
``ProcessorFormatter``, a JSON formatter) to use. Nothing is printed on stdout, ever;
with no logging configured Python shows WARNING and above on stderr, and a host that
configures ``logging`` decides the rest (``logging.getLogger("morag_jobs").setLevel``).

The ``morag-jobs`` command calls :func:`configure_logging` so its own lines go to stderr,
below ``MORAG_LOG_LEVEL`` (default WARNING) hidden.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from morag_jobs import settings

__all__ = ["ROOT", "KeywordLogger", "configure_logging", "get_logger"]

ROOT = "morag_jobs"
_HANDLER_NAME = "morag-jobs-cli"


class KeywordLogger:
    """``logging.Logger`` with keyword fields; formats only what will be emitted."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: Any = False) -> None:
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        exc_info = fields.pop("exc_info", exc_info)
        if fields:
            rendered = " ".join(f"{key}={value!r}" if isinstance(value, str) and (
                not value or " " in value) else f"{key}={value}" for key, value in fields.items())
            message = f"{event} {rendered}"
        else:
            message = event
        logger.log(level, "%s", message, exc_info=exc_info, stacklevel=3,
                   extra={"morag": fields, "morag_event": event})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An ERROR with the exception being handled."""
        self._log(logging.ERROR, event, fields, exc_info=True)


def get_logger(name: str) -> KeywordLogger:
    """The logger for module ``name`` (under ``morag_jobs``)."""
    return KeywordLogger(logging.getLogger(name))


def configure_logging(level: str | None = None) -> None:
    """For the ``morag-jobs`` command: its own log lines on stderr, below ``level`` hidden.

    Only the ``morag_jobs`` logger is touched (a handler of its own, not propagated), so
    a program that configured ``logging`` itself keeps its setup for everything else.
    """
    name = (level or settings.log_level()).upper()
    numeric = logging.getLevelNamesMapping().get(name)
    if numeric is None:
        raise ValueError(f"unknown log level {name!r}; use DEBUG, INFO, WARNING or ERROR")
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
