"""``morag-jobs demo``: the main job, out of the box, end to end with a real worker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from morag_jobs import JobStore
from morag_jobs.events import utc_now
from tests.celery_app import fresh_postgres_schema

DEMO_LIMIT = 90  # seconds: the demo promises under a minute
STOP_LIMIT = 8.0  # seconds from the last job's end to the demo's exit (about 2-3 measured)


def _demo(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "morag_jobs", "demo", "--seconds", "3",
                             *args], capture_output=True, text=True, timeout=DEMO_LIMIT,
                            check=False)
    return result, time.monotonic() - started


def _no_worker_left() -> bool:
    found = subprocess.run(["pgrep", "-f", "celery -A morag_jobs.demo.tasks worker"],
                           capture_output=True, text=True, check=False)
    return found.stdout.strip() == ""


def _assert_all_sources_finished(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"demo failed:\n{result.stdout}\n{result.stderr}"
    out = result.stdout
    for name in ("callbacks + stage plan", "log lines only", "subprocess with a tqdm bar",
                 "remote GPU transcription"):
        row = next((line for line in out.splitlines() if name in line and "FINISHED" in line),
                   None)
        assert row is not None, f"no FINISHED row for {name!r} in:\n{out}"
        assert "100.0%" in row, f"{name!r} should end at 100%: {row}"
    assert "all jobs ended" in out


def _assert_every_source_moved_its_job(store: JobStore) -> None:
    """Completion sets 100%: each job must also show progress from its own source first."""
    jobs = store.list_jobs(limit=10)
    assert len(jobs) == 4
    for job in jobs:
        steps = [e.percentage for e in store.history(job.id)
                 if e.kind == "progress" and e.percentage is not None]
        assert any(0 < p < 100 for p in steps), (
            f"job {job.name!r} showed no progress of its own before completing: {steps}")


def test_demo_runs_every_source_on_the_embedded_default(tmp_path: Path) -> None:
    result, took = _demo("--keep", str(tmp_path))
    _assert_all_sources_finished(result)
    assert took < DEMO_LIMIT
    assert _no_worker_left(), "the demo must leave no worker running"
    with JobStore(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        _assert_every_source_moved_its_job(store)


def test_demo_runs_on_redis_and_postgresql(postgres_url: str, redis_url: str) -> None:
    database = fresh_postgres_schema(postgres_url)
    result, _ = _demo("--broker", redis_url.rsplit("/", 1)[0] + "/13", "--database", database)
    _assert_all_sources_finished(result)
    assert "postgresql+psycopg" in result.stdout
    assert _no_worker_left()
    with JobStore(database) as store:
        _assert_every_source_moved_its_job(store)


def test_demo_exits_promptly_once_its_jobs_end(tmp_path: Path) -> None:
    """The worker gets a warm shutdown on its main process only and stops within seconds;
    it used to sit ~15 s in billiard's Pool.close after its pool children were signalled
    too, until the demo killed it."""
    result, _ = _demo("--keep", str(tmp_path))
    exited = utc_now()
    _assert_all_sources_finished(result)
    with JobStore(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        ended = max(job.finished_at or job.updated_at for job in store.list_jobs(limit=10))
    took = (exited - ended).total_seconds()
    assert took < STOP_LIMIT, f"the demo exited {took:.1f} s after its last job ended"
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "exited with 'signal" not in log, f"pool children were signalled:\n{log[-1500:]}"
    assert "did not stop in time" not in result.stderr, result.stderr
    assert _no_worker_left()


@pytest.mark.parametrize("seconds", ["0", "100"])
def test_demo_refuses_silly_durations(seconds: str) -> None:
    result = subprocess.run([sys.executable, "-m", "morag_jobs", "demo", "--seconds", seconds],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
