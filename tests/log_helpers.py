"""Capture what morag-jobs logs, as structlog's ``capture_logs`` did: one dict per line.

The library logs through the standard ``logging`` module (``morag_jobs.logs``); each
record carries its fields in ``record.morag``. A handler on the ``morag_jobs`` logger
collects them as ``{"event": ..., "log_level": "warning", **fields}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append({
            "event": getattr(record, "morag_event", record.getMessage()),
            "log_level": record.levelname.lower(),
            "logger": record.name,
            **getattr(record, "morag", {}),
        })


@contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Every line logged under ``morag_jobs`` inside the block, DEBUG included."""
    logger = logging.getLogger("morag_jobs")
    collect = _Collect()
    level = logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    try:
        yield collect.entries
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
