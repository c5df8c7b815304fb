"""Cost of reporting progress from inside a real Celery task, next to celery-progress.

One in-process worker (solo pool) with the Redis broker and result backend runs one
task; inside it, the same run times:

- ``report_progress(p)`` in a tight loop (the target is at most 1 µs a call);
- celery-progress's ``ProgressRecorder(self).set_progress(i, n)``, one ``update_state``
  to the Redis result backend per call;
- the log tap: ``logger.info`` of ordinary and of progress lines, with and without
  ``LogTap`` on the logger (which also formats every record to a stream that
  discards it).

Every figure is the median of several runs, in µs per call (or per log record)::

    python bench/callback_bench.py [--calls 100000] [--recorder-calls 1000] [--runs 5]

The job table is ``MORAG_DATABASE_URL`` or a temporary SQLite file; the broker is
``MORAG_BENCH_BROKER_URL`` (default ``redis://127.0.0.1:6379/14``), on a queue of its own.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import celery
from celery import Celery, Task
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult
from celery_progress.backend import ProgressRecorder

from morag_jobs.celery import LogTap, install, report_progress, submit

BROKER_URL = os.environ.get("MORAG_BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")

app = Celery("morag_bench", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600,
                task_default_queue=f"morag-bench-{uuid.uuid4().hex[:8]}")


def _per_call(runs: int, calls: int, body: Any) -> float:
    """Median over ``runs`` of µs per call of ``body(calls)``."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        body(calls)
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


def _empty_loop(calls: int) -> None:
    percent, step = 0.0, 100.0 / calls
    for _ in range(calls):
        percent += step


def _report_loop(calls: int) -> None:
    percent, step = 0.0, 100.0 / calls
    for _ in range(calls):
        report_progress(percent)
        percent += step


class _Discard(io.TextIOBase):
    """A stream that formats cost but writing does not: the records are thrown away."""

    def write(self, text: str) -> int:
        return len(text)


def _log_figures(runs: int, records: int) -> dict[str, float]:
    """µs per ``logger.info`` record: ordinary and progress lines, without and with the tap."""
    logger = logging.getLogger("morag_bench.tap")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    sink = logging.StreamHandler(_Discard())
    sink.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.handlers = [sink]

    def ordinary(n: int) -> None:
        for i in range(n):
            logger.info("fetched page %d of the sitemap", i)

    def progress(n: int) -> None:
        for i in range(n):
            logger.info("Processing... %d%%", i % 100)

    figures = {"log_ordinary_without_tap": _per_call(runs, records, ordinary),
               "log_progress_without_tap": _per_call(runs, records, progress)}
    logger.addHandler(LogTap())
    figures["log_ordinary_with_tap"] = _per_call(runs, records, ordinary)
    figures["log_progress_with_tap"] = _per_call(runs, records, progress)
    logger.handlers = []
    return figures


@app.task(name="morag_bench.callbacks", bind=True)
def callbacks(self: Task, calls: int, recorder_calls: int, runs: int,
              log_records: int) -> dict[str, float]:
    figures = {
        "empty_loop": _per_call(runs, calls, _empty_loop),
        "report_progress": _per_call(runs, calls, _report_loop),
    }
    recorder = ProgressRecorder(self)

    def set_progress(n: int) -> None:
        for i in range(n):
            recorder.set_progress(i, n)

    figures["celery_progress_set_progress"] = _per_call(min(runs, 3), recorder_calls,
                                                        set_progress)
    figures.update(_log_figures(runs, log_records))
    report_progress(100, message="benchmark done")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--recorder-calls", type=int, default=1_000)
    parser.add_argument("--log-records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        database = os.environ.get("MORAG_DATABASE_URL") or f"sqlite:///{Path(scratch)}/jobs.db"
        install(app, database_url=database)
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                          shutdown_timeout=30):
            job = submit(callbacks, (args.calls, args.recorder_calls, args.runs,
                                     args.log_records), name="callback bench")
            figures = AsyncResult(job.metadata["task_id"], app=app).get(timeout=600)
        outside = _log_figures(args.runs, args.log_records)  # no job: the tap returns at once
        figures["log_ordinary_with_tap_outside_a_job"] = outside["log_ordinary_with_tap"]
        figures["log_ordinary_without_tap_outside_a_job"] = outside["log_ordinary_without_tap"]
    _print(figures, args)
    return 0


def _print(figures: dict[str, float], args: argparse.Namespace) -> None:
    print(f"python {platform.python_version()}, celery {celery.__version__}, solo pool, "
          f"broker and result backend {BROKER_URL}; medians of {args.runs} runs")
    print(f"{'empty loop (baseline)':<44}{figures['empty_loop']:>10.3f} µs/iteration")
    print(f"{'report_progress x ' + format(args.calls, ','):<44}"
          f"{figures['report_progress']:>10.3f} µs/call")
    print(f"{'celery-progress set_progress x ' + format(args.recorder_calls, ','):<44}"
          f"{figures['celery_progress_set_progress']:>10.3f} µs/call")
    ratio = figures["celery_progress_set_progress"] / figures["report_progress"]
    print(f"{'ratio set_progress / report_progress':<44}{ratio:>10.0f} x")
    verdict = "meets" if figures["report_progress"] <= 1.0 else "MISSES"
    print(f"report_progress {verdict} the target of 1 µs per call")
    print(f"log tap, {args.log_records:,} logger.info records (formatted to a discarding stream):")
    for kind in ("ordinary", "progress"):
        without = figures[f"log_{kind}_without_tap"]
        with_tap = figures[f"log_{kind}_with_tap"]
        print(f"  {kind + ' lines':<20} without tap {without:8.3f} µs/record, with tap "
              f"{with_tap:8.3f} µs/record, overhead {with_tap - without:+8.3f} µs "
              f"({(with_tap / without - 1) * 100:+.0f}%)")
    without = figures["log_ordinary_without_tap_outside_a_job"]
    with_tap = figures["log_ordinary_with_tap_outside_a_job"]
    print(f"  {'outside a job':<20} without tap {without:8.3f} µs/record, with tap "
          f"{with_tap:8.3f} µs/record, overhead {with_tap - without:+8.3f} µs")


if __name__ == "__main__":
    sys.exit(main())
