"""Logging setup for the programs morag-jobs ships (CLI, worker, API server).

A library does not configure logging for its host application: importing morag-jobs
changes nothing. The ``morag-jobs`` command calls :func:`configure_logging` so its own
log lines go to stderr, below the level ``MORAG_LOG_LEVEL`` (default WARNING) hidden.
"""

from __future__ import annotations

import logging
import sys

import structlog

from morag_jobs import settings

__all__ = ["configure_logging"]


def configure_logging(level: str | None = None) -> None:
    """Send structlog output to stderr, dropping lines below ``level``."""
    name = (level or settings.log_level()).upper()
    numeric = logging.getLevelNamesMapping().get(name)
    if numeric is None:
        raise ValueError(f"unknown log level {name!r}; use DEBUG, INFO, WARNING or ERROR")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
