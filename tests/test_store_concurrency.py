"""Many processes updating one job at once: no lost update, no lowered percentage, no reopening.

Four spawned processes each offer 200 increasing-ish percentages to the same job through
``JobStore.update_job``; one of them completes the job halfway through its run. Every
process records what each of its calls did, and the parent checks the whole story.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any

from morag_jobs.events import utc_now
from morag_jobs.store import Job, JobStatus, JobStore

WORKERS = 4
OFFERS = 200
COMPLETER = 0  # the process that completes the job ...
COMPLETE_AFTER = 100  # ... after this many of its offers


@dataclass
class Outcome:
    """What one process saw: each write's (version, percentage), each refusal, lost races."""

    applied: list[tuple[int, float]] = field(default_factory=list)
    refused_lower: list[float] = field(default_factory=list)
    refused_terminal: list[float] = field(default_factory=list)
    completion_version: int | None = None
    reruns: int = 0
    error: str | None = None


def raise_to(value: float, why: list[str]) -> Any:
    """The handler's rule in miniature: percentage = max(old, new); never touch a terminal job."""

    def mutate(job: Job) -> tuple[dict[str, Any], dict[str, Any]] | None:
        time.sleep(0.0005)  # the handler's work between read and write widens the race window
        if job.status.is_terminal:
            why.append("terminal")
            return None
        if value <= job.percentage:
            why.append("lower")
            return None
        why.append("write")
        changes = {
            "percentage": value,
            "status": JobStatus.PROCESSING,
            "last_progress_at": utc_now(),
        }
        return changes, {"source": "callback"}

    return mutate


def complete(job: Job) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if job.status.is_terminal:
        return None
    return {"status": JobStatus.FINISHED, "finished_at": utc_now()}, {"kind": "completion"}


def offer_all(store: JobStore, job_id: str, worker: int, outcome: Outcome) -> None:
    rng = random.Random(worker)
    for k in range(OFFERS):
        if worker == COMPLETER and k == COMPLETE_AFTER:
            finished = store.update_job(job_id, complete)
            assert finished is not None, "nothing else completes the job"
            outcome.completion_version = finished.version
        value = round(k / OFFERS * 90 + rng.uniform(0, 1.5), 4)
        why: list[str] = []
        written = store.update_job(job_id, raise_to(value, why))
        outcome.reruns += len(why) - 1
        if written is not None:
            outcome.applied.append((written.version, value))
        elif why[-1] == "terminal":
            outcome.refused_terminal.append(value)
        else:
            outcome.refused_lower.append(value)


def worker_main(url: str, job_id: str, worker: int, start: Barrier, results: Any) -> None:
    outcome = Outcome()
    try:
        with JobStore(url, history_limit=50) as store:
            start.wait(timeout=60)
            offer_all(store, job_id, worker, outcome)
    except BaseException:
        outcome.error = traceback.format_exc()
    results.put((worker, outcome))


def run_workers(url: str, job_id: str) -> dict[int, Outcome]:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WORKERS)
    results = context.Queue()
    processes = [
        context.Process(target=worker_main, args=(url, job_id, worker, start, results))
        for worker in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    return outcomes


def test_many_processes_never_lower_the_percentage_or_reopen_a_finished_job(
    database_url: str,
) -> None:
    with JobStore(database_url, create_tables=True) as store:
        job_id = store.create_job(name="contended").id

    began = time.monotonic()
    outcomes = run_workers(database_url, job_id)
    elapsed = time.monotonic() - began

    errors = {worker: o.error for worker, o in outcomes.items() if o.error}
    assert not errors, f"every process should finish without an error: {errors}"

    with JobStore(database_url) as store:
        final = store.require_job(job_id)
        history = store.history(job_id)

    completed_at = outcomes[COMPLETER].completion_version
    assert completed_at is not None
    writes = sorted(write for o in outcomes.values() for write in o.applied)
    versions = [version for version, _ in writes]

    assert final.status is JobStatus.FINISHED, "progress never overwrote the terminal status"
    assert final.version == len(writes) + 1, "version counts every successful write (+ completion)"
    assert sorted([*versions, completed_at]) == list(range(1, final.version + 1)), (
        "each write got its own version: no write was lost or applied twice"
    )
    assert all(version < completed_at for version in versions), "no progress after completion"
    assert sum(o.reruns for o in outcomes.values()) > 0, "the processes should have raced"

    percentages = [value for _, value in writes]
    assert percentages == sorted(percentages) and len(set(percentages)) == len(percentages), (
        "in version order, each write raised the percentage"
    )
    assert final.percentage == max(percentages), "the job keeps the highest percentage applied"

    refused_lower = [v for o in outcomes.values() for v in o.refused_lower]
    refused_terminal = [v for o in outcomes.values() for v in o.refused_terminal]
    assert all(value <= final.percentage for value in refused_lower), (
        "an offer refused as 'not higher' was at most the percentage reached before completion"
    )
    assert len(refused_terminal) >= OFFERS - COMPLETE_AFTER, "late offers met a finished job"
    offered = len(writes) + len(refused_lower) + len(refused_terminal)
    assert offered == WORKERS * OFFERS, "every offer is accounted for"

    assert history[-1].kind == "completion" and history[-1].status is JobStatus.FINISHED
    assert len(history) <= 54, "the history stays within its limit (+ up to 10 % between trims)"
    assert elapsed < 60, f"the contended run should take seconds, took {elapsed:.1f}s"


def create_one(url: str, job_id: str, start: Barrier, results: Any) -> None:
    try:
        create_tables = None if url.startswith("sqlite") else True  # SQLite: the default
        with JobStore(url, create_tables=create_tables) as store:
            start.wait(timeout=60)
            store.create_job(job_id=job_id)
        results.put((job_id, None))
    except BaseException:
        results.put((job_id, traceback.format_exc()))


def test_processes_starting_together_on_a_new_database_migrate_it_once(database_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WORKERS)
    results = context.Queue()
    job_ids = [f"starter-{worker}" for worker in range(WORKERS)]
    processes = [
        context.Process(target=create_one, args=(database_url, job_id, start, results))
        for job_id in job_ids
    ]
    for process in processes:
        process.start()
    errors = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert not any(errors.values()), f"no process should trip over another's migration: {errors}"
    with JobStore(database_url) as store:
        assert sorted(job.id for job in store.list_jobs()) == job_ids
