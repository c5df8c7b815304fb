"""The log tap: a task that only logs ``Processing... 75%`` moves its job.

``LogTap`` is a ``logging.Handler`` a worker plugin adds in worker processes;
``progress_processor`` does the same for structlog users. Both act only while a task
with a job is running (a context-variable lookup otherwise), feed the record's message
through the task's own ``ProgressStream`` (so a "totalling 20 fits" line serves the fit
lines after it, and a nested bar does not move the job), and fold the events it gives
into the task's latest state, exactly as ``report_progress`` would. Both read with
the parser of the job's runtime (one per process, with its pattern packs) unless a tap
is given its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import MutableMapping
from typing import Any

from morag_jobs.parser import ProgressEventParser
from morag_jobs.streams import ProgressStream
from morag_jobs.task.context import current

__all__ = ["LogTap", "ProgressLogHandler", "progress_processor"]

_guard = threading.local()
_OWN_LOGGERS = ("morag_jobs",)


class LogTap(logging.Handler):
    """Feeds log records of running jobs through the parser into their job.

    Without a ``parser`` it reads with the running job's runtime's.
    """

    def __init__(self, parser: ProgressEventParser | None = None, level: int = 0) -> None:
        super().__init__(level)
        self.parser = parser
        self._last: logging.LogRecord | None = None

    def emit(self, record: logging.LogRecord) -> None:
        context = current()
        if context is None or record is self._last or getattr(_guard, "active", False):
            return
        if record.name.startswith(_OWN_LOGGERS):
            return  # never parse our own log lines: no feedback loops
        self._last = record  # a record reaching us through two loggers counts once
        _guard.active = True
        try:
            stream = context.log_stream
            if stream is None:
                stream = context.log_stream = ProgressStream(self.parser or context.runtime.parser)
            for event in stream.feed_line(record.getMessage()):
                context.report_event(event)
        except Exception:  # logging must never fail because of progress
            self.handleError(record)
        finally:
            _guard.active = False


def progress_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: progress in a log call's fields or message moves the job.

    Put it anywhere in the processor chain; it returns ``event_dict`` unchanged.
    """
    context = current()
    if context is None or getattr(_guard, "active", False):
        return event_dict
    _guard.active = True
    try:
        event = context.runtime.parser.parse_fields(event_dict)
        if event is not None:
            context.report_event(event)
    finally:
        _guard.active = False
    return event_dict


ProgressLogHandler = LogTap
"""The log tap's first name, kept for code written against it: it read too much like
``ProgressHandler``, which it is not (it feeds the parser; the handler writes jobs)."""
