"""Helpers shared by the ProgressHandler tests, importable by spawned worker processes."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from morag_jobs.events import ProgressEvent
from morag_jobs.handler import ProgressHandler
from morag_jobs.stages import StagePlan
from morag_jobs.store import HistoryEntry, JobStore
from tests.log_helpers import capture_logs

PLAN = StagePlan({"download": (0, 10), "processing": (10, 70), "indexing": (70, 100)})

WORKERS = 4
EVENTS_PER_WORKER = 60
COMPLETER = 1  # the process that completes the job ...
COMPLETE_AFTER = 30  # ... after this many of its events


_HANDLERS: dict[int, ProgressHandler] = {}


def handler_of(store: JobStore) -> ProgressHandler:
    """The handler that reaper passes on ``store`` write through (one per store, as a
    process has one)."""
    handler = _HANDLERS.get(id(store))
    if handler is None or handler.store is not store:
        handler = _HANDLERS[id(store)] = ProgressHandler(store, auto_create_jobs=False)
    return handler


def progress_history(store: JobStore, job_id: str) -> list[HistoryEntry]:
    """The job's history rows written for progress (not completion, retry ...)."""
    return [event for event in store.history(job_id) if event.kind == "progress"]


@dataclass
class WorkerReport:
    """What one process of the multi-process test saw."""

    worker: int
    completed: bool | None = None
    accepted: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    error: str | None = None


def interleaved_percent(worker: int, step: int) -> float:
    """Worker ``w`` sends w, w+4, w+8 ... scaled into 0..95: together they climb in turn."""
    return round((step * WORKERS + worker) * 95 / (EVENTS_PER_WORKER * WORKERS), 4)


def report_progress_in_process(
    url: str, job_id: str, worker: int, start: Any, results: Any
) -> None:
    """Body of one worker process: its own handler, interleaved progress, maybe completion."""
    report = WorkerReport(worker)
    try:
        with capture_logs() as logs:
            handler = ProgressHandler(database_url=url, interval=0.05)
            start.wait(timeout=60)
            for step in range(EVENTS_PER_WORKER):
                if worker == COMPLETER and step == COMPLETE_AFTER:
                    report.completed = handler.handle_job_completion(job_id, True, "done")
                event = ProgressEvent(
                    percent=interleaved_percent(worker, step),
                    message=f"worker {worker} step {step}",
                    source="callback",
                )
                report.accepted += handler.apply(event, job_id).accepted
                time.sleep(0.005)
            handler.close()
            handler.store.close()
        report.stats = handler.stats.to_dict()
        report.log_lines = [repr(entry) for entry in logs]
    except BaseException:
        report.error = traceback.format_exc()
    results.put(report)
