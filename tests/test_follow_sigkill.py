"""``tail`` killed with SIGKILL and restarted from its checkpoint applies each line once.

The follower runs in its own process against a SQLite job table. Each line belongs to
one of a few jobs and names itself ("line 17"); every write of a job leaves a history
row with the message of the last line it applied, so a line applied twice shows up as
a row that does not move forward, and a line lost as a job that never shows it.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_jobs.store import JobStore
from tests.handler_helpers import progress_history

REPO = Path(__file__).resolve().parent.parent
JOBS = 8
MAX_KILLS = 4
WAIT_SECONDS = 60.0

FOLLOW_UNTIL_KILLED = """
import os, signal, sys
from morag_jobs.follow import LogFollower
from morag_jobs.handler import ProgressHandler

url, log, checkpoint, die_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
handler = ProgressHandler(database_url=url, interval=0.05, auto_create_jobs=False)
writes = 0

def die(kind, job):
    # SIGKILL right after a job write has been committed, before the checkpoint says so.
    global writes
    writes += 1
    if writes == die_after:
        os.kill(os.getpid(), signal.SIGKILL)

handler.add_listener(die)
follower = LogFollower(log, handler=handler, checkpoint=checkpoint, from_start=True,
                       trust_line_ids=True)
while follower.poll_once():
    pass
follower.close()
handler.close()
"""


def job_line(number: int, per_job: int) -> str:
    """Line ``number`` (from 1): job ``number % JOBS``; each round of JOBS lines is a step."""
    step = (number - 1) // JOBS + 1
    return json.dumps({"job_id": f"job-{number % JOBS}", "percent": step * 100 / per_job,
                       "message": f"line {number}"}) + "\n"


def applied_lines(store: JobStore, job_id: str) -> list[int]:
    """The line numbers the job's history rows show, in the order they were written."""
    return [int(row.message.split()[1]) for row in progress_history(store, job_id)]


def assert_each_line_once(store: JobStore, lines: int, per_job: int, last_lines: set[int]) -> None:
    for job in range(JOBS):
        job_id = f"job-{job}"
        seen = applied_lines(store, job_id)
        assert seen == sorted(set(seen)), f"{job_id} applied a line twice (history {seen})"
        assert last_lines & {n for n in range(1, lines + 1) if n % JOBS == job} <= set(seen), (
            f"{job_id} lost a batch's last line (history {seen})")
        assert store.require_job(job_id).percentage == 100.0 * (lines // JOBS) / per_job


@pytest.fixture
def store(sqlite_url: str) -> Iterator[JobStore]:
    with JobStore(sqlite_url, create_tables=True) as job_store:
        for job in range(JOBS):
            job_store.create_job(job_id=f"job-{job}")
        yield job_store


@pytest.mark.parametrize("seed", [7, 11])
def test_a_kill_between_the_job_write_and_the_checkpoint_applies_nothing_twice(
    store: JobStore, sqlite_url: str, tmp_path: Path, seed: int
) -> None:
    """Killed right after the k-th job write (k drawn by the seed), over and over."""
    rng = random.Random(seed)
    log, checkpoint = tmp_path / "worker.log", tmp_path / "tail.checkpoint"
    batches, per_batch = 3, 5 * JOBS
    per_job = batches * per_batch // JOBS
    kills = 0
    for batch in range(batches):
        with log.open("a") as file:
            file.writelines(job_line(n, per_job)
                            for n in range(batch * per_batch + 1, (batch + 1) * per_batch + 1))
        for attempt in range(MAX_KILLS + 1):
            die_after = rng.randint(1, JOBS) if attempt < MAX_KILLS else 0  # 0: left to finish
            finished = subprocess.run(
                [sys.executable, "-c", FOLLOW_UNTIL_KILLED, sqlite_url, str(log),
                 str(checkpoint), str(die_after)],
                cwd=REPO, capture_output=True, text=True, timeout=WAIT_SECONDS, check=False)
            if finished.returncode == 0:
                break
            assert finished.returncode == -signal.SIGKILL, finished.stderr
            kills += 1
    assert kills >= batches, "every batch saw at least one kill"
    last_lines = {b * per_batch - k for b in range(1, batches + 1) for k in range(JOBS)}
    assert_each_line_once(store, batches * per_batch, per_job, last_lines)


def test_tail_killed_at_random_moments_while_lines_arrive_ends_right(
    store: JobStore, sqlite_url: str, tmp_path: Path
) -> None:
    """``morag-jobs tail`` SIGKILLed at seeded random moments, restarted each time.

    Kills land anywhere (starting up, reading, between the two checkpoint writes); the
    test above aims at the narrow moment after a job write on purpose.
    """
    rng = random.Random(3)
    log, checkpoint = tmp_path / "worker.log", tmp_path / "tail.checkpoint"
    lines, per_job = 30 * JOBS, 30
    log.write_text("")
    command = [sys.executable, "-m", "morag_jobs", "tail", str(log), "--from-start",
               "--trust-line-ids", "--checkpoint", str(checkpoint), "--database", sqlite_url,
               "--interval", "0.02"]
    written = 0
    for _ in range(6):
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + rng.uniform(0.8, 2.0)
        while time.monotonic() < deadline:
            more = min(rng.randint(0, 4), lines - written)
            with log.open("a") as file:
                file.writelines(job_line(n, per_job)
                                for n in range(written + 1, written + more + 1))
            written += more
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(WAIT_SECONDS)
    with log.open("a") as file:
        file.writelines(job_line(n, per_job) for n in range(written + 1, lines + 1))
    finished = subprocess.run([*command, "--max-seconds", "1"], cwd=REPO, capture_output=True,
                              text=True, timeout=WAIT_SECONDS, check=False)
    assert finished.returncode == 0, finished.stderr
    assert_each_line_once(store, lines, per_job, {lines - k for k in range(JOBS)})
