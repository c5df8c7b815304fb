"""ProgressHandler ingestion: 1,000,000 events for 200 jobs, on SQLite and PostgreSQL.

Half the events come from the parser (``process_log_lines`` over JSON lines that name
their job and Celery task lines resolved through the task mapping), half from direct
``apply`` calls. Prints events/s ingested, the database writes issued against the
bound ``jobs x (run time / interval) + completions``, and checks the final table
against the expected last state of every job. The baseline, measured in the same run,
is one database write per event (the original design) on a sample of events.

    python bench/handler_bench.py [--events 1000000] [--jobs 200] [--interval 0.5]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy

from morag_jobs import ProgressEvent
from morag_jobs.compat import ProgressHandler
from morag_jobs.store import JobStatus, JobStore

BATCH = 2_000


@dataclass
class Result:
    database: str
    events: int
    ingest_seconds: float
    total_seconds: float
    writes: int
    bound: float
    per_event_write_rate: float
    errors: list[str]


def make_lines(jobs: list[str], tasks: dict[str, str], per_job: int) -> list[str]:
    """Interleaved log lines, per job rising from 0 to 50% over ``per_job`` lines."""
    lines = []
    task_of = {job: task for task, job in tasks.items()}
    for i in range(per_job):
        percent = round(50.0 * (i + 1) / per_job, 4)
        for n, job in enumerate(jobs):
            if n % 2:
                lines.append(json.dumps({"event": f"chunk {i}", "percent": percent,
                                         "job_id": job}))
            else:
                lines.append(f"[2026-11-22 12:00:00,000: INFO/ForkPoolWorker-1] ingest"
                             f"[{task_of[job]}]: Progress: {percent}% - chunk {i}")
    return lines


def run(url: str, label: str, events: int, job_count: int, interval: float) -> Result:
    store = JobStore(url, create_tables=True)
    handler = ProgressHandler(store=store, interval=interval)
    jobs = [store.create_job(name=f"bench-{n}").id for n in range(job_count)]
    tasks = {str(uuid.uuid4()): job for job in jobs}
    for task, job in tasks.items():
        handler.mappings.bind("task", task, job)
    per_job = events // job_count // 2
    lines = make_lines(jobs, tasks, per_job)
    # Direct events are made as they are applied: an event made before the log lines were
    # parsed would be older than them, and the handler rightly ignores older events.
    direct = [(job, 50.0 + 50.0 * (i + 1) / per_job, f"direct {i}")
              for i in range(per_job) for job in jobs]
    # The inputs (a million strings and tuples) are set-up, not the system measured: keep
    # the cyclic garbage collector from rescanning them over and over during the run.
    gc.collect()
    gc.freeze()
    writes_before = handler.stats.writes
    start = time.perf_counter()
    for offset in range(0, len(lines), BATCH):
        handler.process_log_lines(lines[offset:offset + BATCH])
    for job, percent, message in direct:
        handler.apply(ProgressEvent(percent=percent, message=message, source="callback"), job)
    ingest = time.perf_counter() - start
    for job in jobs:
        handler.handle_job_completion(job, True, "done")
    handler.flush()
    total = time.perf_counter() - start
    writes = handler.stats.writes - writes_before
    gc.unfreeze()
    errors = check(store, jobs, per_job)
    sample = per_event_baseline(store, jobs[0])
    handler.close()
    store.close()
    bound = job_count * (total / interval + 1) + job_count
    return Result(label, len(lines) + len(direct), ingest, total, writes, bound, sample, errors)


def check(store: JobStore, jobs: list[str], per_job: int) -> list[str]:
    """Every job FINISHED at 100%, its last progress the last direct event."""
    errors = []
    expected_last = f"direct {per_job - 1}"
    for job_id in jobs:
        job = store.require_job(job_id)
        progress = [e for e in store.history(job_id) if e.kind == "progress"]
        if job.status is not JobStatus.FINISHED or job.percentage != 100.0:
            errors.append(f"{job_id}: {job.status} {job.percentage}")
        elif not progress or progress[-1].message != expected_last:
            last = progress[-1].message if progress else None
            errors.append(f"{job_id}: last progress {last!r}, expected {expected_last!r}")
    return errors


def per_event_baseline(store: JobStore, job_id: str, samples: int = 300) -> float:
    """Events/s when every event is its own database write (the original design)."""
    handler = ProgressHandler(store=store, interval=0)
    store.create_job(job_id=f"{job_id}-baseline")
    start = time.perf_counter()
    for i in range(samples):
        handler.apply(ProgressEvent(percent=i / samples * 100, message=str(i)),
                      f"{job_id}-baseline", immediate=True)
    rate = samples / (time.perf_counter() - start)
    handler.close()
    return rate


def fresh_postgres(admin_url: str) -> tuple[str, sqlalchemy.Engine, str]:
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"morag_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}", admin, name


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--events", type=int, default=1_000_000)
    cli.add_argument("--jobs", type=int, default=200)
    cli.add_argument("--interval", type=float, default=0.5)
    cli.add_argument("--postgres",
                     default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    cli.add_argument("--skip-postgres", action="store_true")
    args = cli.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        results.append(run(sqlite_url, "SQLite", args.events, args.jobs, args.interval))
    if not args.skip_postgres:
        url, admin, name = fresh_postgres(args.postgres)
        try:
            results.append(run(url, "PostgreSQL", args.events, args.jobs, args.interval))
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"{args.events:,} events for {args.jobs} jobs, coalescing interval {args.interval}s")
    for r in results:
        rate = r.events / r.ingest_seconds
        print(f"{r.database:>10}: {rate:>10,.0f} events/s ingested "
              f"({r.ingest_seconds:.1f}s; {r.total_seconds:.1f}s with the final flush); "
              f"{r.writes:,} writes (bound {r.bound:,.0f}); "
              f"one-write-per-event baseline {r.per_event_write_rate:,.0f} events/s "
              f"-> {rate / r.per_event_write_rate:,.0f}x; "
              f"final table {'OK' if not r.errors else 'WRONG: ' + '; '.join(r.errors[:3])}")
    if any(r.errors or r.writes > r.bound for r in results):
        raise SystemExit(1)
    median = statistics.median(r.events / r.ingest_seconds for r in results)
    print(f"median events/s: {median:,.0f}")


if __name__ == "__main__":
    main()
