"""What a new user sees first: ETA wording, the bar without colour, --watch into a pipe,
flags in --help, history numbering. Through the real entry point, output piped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from morag_jobs import JobStore
from morag_jobs.compat import ProgressHandler
from morag_jobs.eta import describe_remaining

CELLS = 30


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "morag_jobs", *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def store(sqlite_url: str) -> Iterator[JobStore]:
    store = JobStore(sqlite_url, create_tables=True)
    store.count_jobs()
    yield store
    store.close()


def _report(store: JobStore, job_id: str, *lines: str, pause: float = 0.0) -> None:
    handler = ProgressHandler(store=store, interval=0)
    for line in lines:
        handler.process_log_line(line, job_id=job_id)
        handler.flush()  # one history row per line
        time.sleep(pause)
    handler.close()


def _progress_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("Progress"))


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.4, "any moment"), (42, "~42 s"), (95, "~1 min 35 s"), (120, "~2 min"),
    (599, "~9 min 59 s"), (629, "~10 min"), (3570, "~1 h"), (3660 + 25, "~1 h 1 min"),
    (50 * 3600, "~2 d 2 h"),
])
def test_eta_keeps_the_seconds_under_ten_minutes(seconds: float, shown: str) -> None:
    assert describe_remaining(timedelta(seconds=seconds)) == shown


def test_status_shows_a_minute_and_a_half_as_such(store: JobStore, sqlite_url: str) -> None:
    job = store.create_job(name="slow")
    # 10% -> 11% in about a second: about 90 s left, which "~1 min" understated
    _report(store, job.id, "Processing file 100 of 1000", "Processing file 110 of 1000",
            pause=1.0)
    result = run("status", job.id, "--database", sqlite_url)
    assert result.returncode == 0, result.stderr
    eta = next(line for line in result.stdout.splitlines() if line.startswith("ETA"))
    assert re.fullmatch(r"ETA\s+~[12] min \d{1,2} s\s*", eta), eta


def test_watch_into_a_pipe_ends_its_output_with_a_newline(
    store: JobStore, sqlite_url: str
) -> None:
    job = store.create_job(name="done")
    handler = ProgressHandler(store=store)
    handler.handle_job_completion(job.id, True, "all good")
    handler.close()
    result = run("status", job.id, "--watch", "--interval", "0.2", "--database", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n"), repr(result.stdout[-40:])
    assert "FINISHED" in result.stdout


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {}], ids=["NO_COLOR", "piped"])
def test_an_empty_bar_is_not_drawn_like_a_full_one(
    store: JobStore, sqlite_url: str, env: dict[str, str]
) -> None:
    empty = store.create_job(name="not started")
    half = store.create_job(name="half")
    _report(store, half.id, "Processing file 50 of 100")
    full = store.create_job(name="done")
    handler = ProgressHandler(store=store)
    handler.handle_job_completion(full.id, True, "ok")
    handler.close()
    bars = {}
    for name, job_id in (("empty", empty.id), ("half", half.id), ("full", full.id)):
        result = run("status", job_id, "--database", sqlite_url, env=env)
        assert result.returncode == 0, result.stderr
        bars[name] = _progress_line(result.stdout)
    assert "░" * CELLS in bars["empty"] and "█" not in bars["empty"], bars["empty"]
    assert "█" * 15 + "░" * 15 in bars["half"], bars["half"]
    assert "█" * CELLS in bars["full"] and "░" not in bars["full"], bars["full"]


def test_a_terminal_without_unicode_gets_an_ascii_bar(store: JobStore, sqlite_url: str) -> None:
    job = store.create_job(name="half")
    _report(store, job.id, "Processing file 50 of 100")
    result = run("status", job.id, "--database", sqlite_url,
                 env={"PYTHONIOENCODING": "ascii", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    assert "#" * 15 + "-" * 15 in _progress_line(result.stdout), result.stdout


@pytest.mark.parametrize("command", [
    [], ["status"], ["list"], ["history"], ["cancel"], ["reap"], ["parse"], ["tail"],
    ["serve"], ["demo"], ["keys"], ["keys", "create"], ["webhooks"],
], ids=lambda words: " ".join(words) or "morag-jobs")
def test_help_shows_no_value_placeholder_on_flags(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout
    assert "<bool>" not in result.stdout, result.stdout


def test_flags_still_take_no_value(store: JobStore, sqlite_url: str) -> None:
    job = store.create_job(name="pending")
    result = run("status", job.id, "--json", "--database", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == job.id


def test_history_numbers_rows_per_job_and_json_keeps_the_ids(
    store: JobStore, sqlite_url: str
) -> None:
    first = store.create_job(name="first")
    _report(store, first.id, "Processing file 1 of 4", "Processing file 2 of 4")
    second = store.create_job(name="second")
    _report(store, second.id, "Processing file 1 of 4", "Processing file 2 of 4",
            "Processing file 3 of 4")
    table = run("history", second.id, "--database", sqlite_url)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[1:] if line.strip()]
    assert [row[0] for row in rows] == ["1", "2", "3"], table.stdout
    as_json = json.loads(run("history", second.id, "--json", "--database", sqlite_url).stdout)
    ids = [event["id"] for event in as_json]
    assert ids == sorted(ids) and ids[0] > 2, "the ids are the history table's own"
