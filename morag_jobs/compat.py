"""The original MoRAG tracker's names, over the handler and a parser.

Code written against ``morag_core.jobs`` keeps working with one changed import::

    from morag_jobs.compat import ProgressEventParser, ProgressHandler

    handler = ProgressHandler()
    handler.register_job_mapping("worker-1", "job-123")
    handler.process_log_line(log_line, job_id="job-123")
    handler.process_remote_worker_progress("worker-1", 75, "Processing audio")
    handler.process_celery_task_progress("task-123", 50, "Processing document")
    handler.handle_job_completion("job-123", True, "Processing completed")

This ``ProgressHandler`` *is* the package's handler (a subclass that adds names, no
behaviour of its own): every call ends in ``apply`` or a lifecycle method, so listeners
see these changes like any other. As the seed's handler did, it queues completion
webhooks itself (``webhooks=False`` to leave that to the host's assembly). New code
uses :class:`morag_jobs.ProgressHandler` and its ``mappings`` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from morag_jobs import handler as core
from morag_jobs.errors import InvalidProgress
from morag_jobs.events import ProgressEvent, check_percent
from morag_jobs.outcomes import ApplyResult
from morag_jobs.parser import ProgressEventParser
from morag_jobs.webhook_outbox import attach_outbox

__all__ = ["ProgressEventParser", "ProgressHandler"]

log = logging.getLogger(__name__)


class ProgressHandler(core.ProgressHandler):
    """``morag_jobs.ProgressHandler`` with the seed's method names and its own parser."""

    def __init__(
        self, *args: Any, parser: ProgressEventParser | None = None, webhooks: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.parser = parser if parser is not None else ProgressEventParser()
        if webhooks:
            attach_outbox(self)

    # -- mappings ------------------------------------------------------------------------

    def register_job_mapping(self, worker_id: str, job_id: str) -> None:
        """Progress from ``worker_id`` goes to ``job_id`` (persisted: every process sees it)."""
        self._ensure_job(job_id)
        self.mappings.bind("worker", worker_id, job_id)

    def unregister_job_mapping(self, worker_id: str) -> bool:
        return self.mappings.unbind("worker", worker_id)

    def register_task_mapping(self, task_id: str, job_id: str) -> None:
        """Progress from Celery task ``task_id`` goes to ``job_id``."""
        self._ensure_job(job_id)
        self.mappings.bind("task", task_id, job_id)

    def get_job_id_for_worker(self, worker_id: str) -> str | None:
        return self.mappings.lookup("worker", worker_id)

    def get_job_id_for_task(self, task_id: str) -> str | None:
        return self.mappings.lookup("task", task_id)

    # -- progress ------------------------------------------------------------------------

    def process_log_line(
        self, line: str | bytes, job_id: str | None = None, worker_id: str | None = None
    ) -> bool:
        """Parse one log line and apply its progress; False when it has none or is refused."""
        event = self.parser.parse_line(line)
        if event is None:
            return False
        return self._apply_logged(event, job_id, worker_id).accepted

    def process_log_lines(
        self, lines: Iterable[str | bytes] | str, job_id: str | None = None,
        worker_id: str | None = None,
    ) -> int:
        """Parse many lines (fast chunk path) and apply them; the number accepted."""
        text = lines if isinstance(lines, str) else "\n".join(
            (line.decode("utf-8", "replace") if isinstance(line, bytes) else line).rstrip("\n")
            for line in lines
        )
        return sum(
            self._apply_logged(event, job_id, worker_id).accepted
            for event in self.parser.parse_chunk(text)
        )

    def process_remote_worker_progress(
        self, worker_id: str, percentage: float, message: str | None = None
    ) -> bool:
        """Progress reported by a remote worker, for the job mapped to it."""
        job_id = self.mappings.lookup("worker", worker_id)
        if job_id is None:
            self.stats.count("remote", "no_job")
            log.warning("no job mapped to remote worker %s", worker_id)
            return False
        event = self._event(percentage, message, source="remote", worker_id=worker_id)
        return event is not None and self.apply(event, job_id).accepted

    def process_celery_task_progress(
        self, task_id: str, percentage: float, message: str | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Progress of a Celery task: its mapped job, else the job whose id is the task id."""
        job_id = self.mappings.lookup("task", task_id)
        if job_id is None:
            job_id = task_id
            if self.auto_create_jobs and user_id is not None:
                self._ensure_job(job_id, user_id=user_id)
        event = self._event(percentage, message, source="callback", task_id=task_id)
        return event is not None and self.apply(event, job_id).accepted

    def sync_job_with_logs(self, job_id: str, lines: Iterable[str | bytes]) -> bool:
        """Apply the latest progress found in ``lines`` to the job, now."""
        latest = self.parser.get_latest_progress(lines)
        if latest is None:
            return False
        return self.apply(latest, job_id, immediate=True).accepted

    def handle_job_error(self, job_id: str, error_message: str) -> bool:
        """The job failed with ``error_message``; its percentage is kept."""
        return self.handle_job_completion(job_id, False, error_message)

    # -- internals -----------------------------------------------------------------------

    def _apply_logged(
        self, event: ProgressEvent, job_id: str | None, worker_id: str | None
    ) -> ApplyResult:
        if worker_id is not None and job_id is None:
            job_id = self.mappings.lookup("worker", worker_id)
            if job_id is None:
                self.stats.count(event.source, "no_job")
                return ApplyResult(False, "no_job")
        return self.apply(event, job_id)

    def _event(self, percentage: float, message: str | None, **fields: str) -> ProgressEvent | None:
        try:
            return ProgressEvent(percent=check_percent(percentage), message=message or "",
                                 **fields)  # type: ignore[arg-type]
        except InvalidProgress as error:
            self.stats.count(fields.get("source", "api"), "rejected")
            log.warning("progress rejected: %s", error)
            return None
