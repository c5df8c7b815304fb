"""``morag-jobs tail`` through its real entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from morag_jobs.cli.tail import _summary
from morag_jobs.follow import FollowerStats
from morag_jobs.store import JobStore

WAIT_SECONDS = 30.0


def tail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "morag_jobs", "tail", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert process.poll() is None, f"tail exited early: {process.communicate()}"
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def progress(i: int, total: int) -> str:
    return f"Processing file {i} of {total}\n"


def test_tail_prints_one_line_per_applied_event_and_a_summary(
    sqlite_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    log.write_text(progress(1, 4) + "noise\n" + progress(2, 4) + "Processing file 3 of")
    result = tail(str(log), "--job", "job-1", "--from-start", "--database", sqlite_url,
                  "--max-seconds", "0.3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "job-1\t 25.00% 1/4\tProcessing file 1 of 4",
        "job-1\t 50.00% 2/4\tProcessing file 2 of 4",
    ], "the half line at the end waits for its newline"
    assert result.stderr.splitlines()[-1] == (
        "3 lines read, 2 events: 2 applied, 0 without a job, 0 refused; "
        "0 rotations (0 by truncation)")
    with JobStore(sqlite_url) as store:
        assert store.require_job("job-1").percentage == 50.0, "--job creates the job"


def test_tail_job_and_worker_together_is_a_usage_error(tmp_path: Path) -> None:
    result = tail(str(tmp_path / "x.log"), "--job", "a", "--worker", "b")
    assert result.returncode == 2
    assert result.stderr.strip() == "morag-jobs: --job and --worker cannot be used together"


def test_tail_of_a_corrupt_checkpoint_is_a_usage_error(sqlite_url: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "tail.checkpoint"
    checkpoint.write_text("[]")
    result = tail(str(tmp_path / "x.log"), "--checkpoint", str(checkpoint),
                  "--database", sqlite_url, "--max-seconds", "0")
    assert result.returncode == 2
    assert result.stderr.startswith(f"morag-jobs: checkpoint {checkpoint}: not a morag-jobs")


def test_tail_without_a_job_counts_lines_and_creates_no_job(
    sqlite_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    log.write_text(progress(1, 4) + '{"job_id": "ghost", "percent": 20}\n')
    result = tail(str(log), "--from-start", "--database", sqlite_url, "--max-seconds", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "2 events: 0 applied, 2 without a job" in result.stderr
    assert "1 naming a job not followed (see --trust-line-ids)" in result.stderr
    with JobStore(sqlite_url) as store:
        assert store.count_jobs() == 0


def test_tail_trusts_line_ids_only_when_told_and_unbound(
    sqlite_url: str, tmp_path: Path
) -> None:
    with JobStore(sqlite_url, create_tables=True) as store:
        store.create_job(job_id="mine")
    log = tmp_path / "own.log"
    log.write_text('{"job_id": "mine", "percent": 20}\n')
    result = tail(str(log), "--from-start", "--trust-line-ids", "--database", sqlite_url,
                  "--max-seconds", "0")
    assert result.returncode == 0, result.stderr
    with JobStore(sqlite_url) as store:
        assert store.require_job("mine").percentage == 20.0
    both = tail(str(log), "--job", "mine", "--trust-line-ids", "--database", sqlite_url)
    assert both.returncode == 2 and "--trust-line-ids is for files not bound" in both.stderr


def test_tail_resumes_from_its_checkpoint(sqlite_url: str, tmp_path: Path) -> None:
    log, checkpoint = tmp_path / "worker.log", tmp_path / "tail.checkpoint"
    log.write_text(progress(1, 4) + progress(2, 4))
    options = ["--job", "job-1", "--checkpoint", str(checkpoint), "--database", sqlite_url,
               "--max-seconds", "0"]
    first = tail(str(log), "--from-start", *options)
    assert len(first.stdout.splitlines()) == 2, first.stderr
    with log.open("a") as file:
        file.write(progress(3, 4))
    second = tail(str(log), *options)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["job-1\t 75.00% 3/4\tProcessing file 3 of 4"]


def test_tail_follows_rotation_and_exits_cleanly_on_sigterm(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A file created after the start, rotated by rename; SIGTERM flushes and checkpoints."""
    log, checkpoint = tmp_path / "worker.log", tmp_path / "tail.checkpoint"
    with JobStore(sqlite_url) as store:
        store.create_job(job_id="job-1")
    process = subprocess.Popen(
        [sys.executable, "-m", "morag_jobs", "tail", str(log), "--job", "job-1",
         "--checkpoint", str(checkpoint), "--database", sqlite_url, "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(checkpoint.exists, process, "tail never started following")
        log.write_text(progress(1, 4) + progress(2, 4))
        with JobStore(sqlite_url) as store:
            wait_until(lambda: store.require_job("job-1").percentage == 50.0, process,
                       "tail never read the new file")
            os.rename(log, tmp_path / "worker.log.1")
            log.write_text(progress(3, 4) + progress(4, 4))
            wait_until(lambda: store.require_job("job-1").percentage == 100.0, process,
                       "tail never read the file that replaced the rotated one")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert [row.split("\t")[2] for row in stdout.splitlines()] == [
        progress(i, 4).strip() for i in range(1, 5)]
    assert "4 lines read" in stderr
    files = json.loads(checkpoint.read_text())["files"]
    assert files[str(log)]["offset"] == log.stat().st_size


def test_the_summary_says_when_a_truncation_lost_lines() -> None:
    quiet = _summary(FollowerStats(lines=10))
    assert "LOST" not in quiet and "restart" not in quiet
    lost = _summary(FollowerStats(lines=10, truncations=1, truncated_unread=1,
                                  unread_bytes=4096, already_applied=3))
    assert "LOST 4096 bytes to 1 truncations" in lost and "delaycompress" in lost
    assert "3 applied before a restart, skipped" in lost
