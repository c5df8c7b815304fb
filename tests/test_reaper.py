"""The reaper on the job table (SQLite and PostgreSQL): who is failed, who awaits redelivery,
one pass at a time across processes, and ``morag-jobs serve`` reaping while no worker lives.

Jobs are crafted the way the worker plugin leaves them (``rules.start`` with or without
``redelivery_ok``, then a heartbeat that stopped); passes are driven with an explicit
``now`` so that no test waits out a timeout.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import pytest
from handler_helpers import handler_of

from morag_jobs import rules
from morag_jobs.events import ProgressEvent, utc_now
from morag_jobs.reaper import Pass, Reaper, reap, reap_pass
from morag_jobs.store import Job, JobStatus, JobStore
from tests.services import fresh_postgres_schema

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0
WAIT = 600.0  # the redelivery timeout of these tests




@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as job_store:
        job_store.count_jobs()  # migrated now, not inside the first pass
        yield job_store


def silent_job(store: JobStore, *, redelivery_expected: bool, silent_for: float = 600) -> Job:
    """A job a worker started (at 5%) whose heartbeat stopped ``silent_for`` seconds ago."""
    job = store.create_job(name="crawl", metadata={"task_id": "t-1"})
    store.update_job(job.id, lambda j: rules.start(j, "w1@host", redelivery_ok=redelivery_expected))
    old = utc_now() - timedelta(seconds=silent_for)
    silent = store.update_job(job.id, lambda j: (
        {"percentage": 5.0, "started_at": old, "heartbeat_at": old, "last_progress_at": old},
        None))
    assert silent is not None
    return silent


def requeued(store: JobStore) -> tuple[Job, datetime]:
    """A silent job whose task will come back, sent to PENDING by a pass; the pass's time."""
    job = silent_job(store, redelivery_expected=True)
    now = utc_now()
    [waiting] = reap(handler_of(store), TIMEOUT, redelivery_timeout=WAIT, now=now)
    assert waiting.id == job.id and waiting.status is JobStatus.PENDING, waiting
    return waiting, now


def history(store: JobStore, job_id: str) -> list[tuple[str, str, str | None]]:
    return [(e.source, e.kind, e.message) for e in store.history(job_id)]


class TestWhoIsReaped:
    def test_a_silent_job_whose_task_will_not_come_back_is_failed_as_worker_lost(
        self, store: JobStore
    ) -> None:
        job = silent_job(store, redelivery_expected=False)
        [reaped] = reap(handler_of(store), TIMEOUT, redelivery_timeout=WAIT)
        assert reaped.id == job.id and reaped.status is JobStatus.FAILED, reaped
        assert reaped.error == "worker lost: no heartbeat for 120s"
        assert reaped.percentage == 5.0, "expected FAILED to keep the percentage reached"

    def test_a_job_started_as_merely_acks_late_is_failed_not_requeued(
        self, store: JobStore
    ) -> None:
        """Celery acknowledges an acks_late task whose pool process died unless
        reject_on_worker_lost is on: the old ``acks_late`` mark promises no redelivery."""
        job = silent_job(store, redelivery_expected=False)
        store.update_job(job.id, lambda j: ({"metadata": {**j.metadata, "acks_late": True}}, None))
        [reaped] = reap(handler_of(store), TIMEOUT, redelivery_timeout=WAIT)
        assert reaped.status is JobStatus.FAILED, f"expected FAILED, got {reaped.status}"

    def test_a_silent_job_whose_task_will_come_back_waits_pending_with_a_deadline(
        self, store: JobStore
    ) -> None:
        job = silent_job(store, redelivery_expected=True)
        now = utc_now()
        [reaped] = reap(handler_of(store), TIMEOUT, redelivery_timeout=WAIT, now=now)
        assert reaped.status is JobStatus.PENDING, f"expected PENDING, got {reaped.status}"
        assert reaped.error is None and reaped.finished_at is None
        assert "waiting for redelivery (up to 600s)" in reaped.summary, reaped.summary
        deadline = datetime.fromisoformat(reaped.metadata["redelivery_deadline"])
        assert deadline == now + timedelta(seconds=WAIT), reaped.metadata
        assert history(store, job.id)[-1][:2] == ("reaper", "requeue")

    def test_a_job_with_a_fresh_heartbeat_is_left_running(self, store: JobStore) -> None:
        silent_job(store, redelivery_expected=False, silent_for=5)
        assert reap(handler_of(store), TIMEOUT, redelivery_timeout=WAIT) == []


class TestAwaitingRedelivery:
    def test_a_job_still_pending_past_its_deadline_is_failed_by_a_pass(
        self, store: JobStore
    ) -> None:
        job = store.create_job(name="crawl")
        past = (utc_now() - timedelta(seconds=1)).isoformat()
        store.update_job(job.id, lambda j: (
            {"percentage": 40.0, "summary": "worker lost: ...; waiting for redelivery",
             "metadata": {"redelivery_expected": True, "redelivery_deadline": past,
                          "redelivery_timeout": 600}}, None))
        [reaped] = reap(handler_of(store), TIMEOUT, redelivery_timeout=WAIT)
        assert reaped.status is JobStatus.FAILED, f"expected FAILED, got {reaped.status}"
        assert reaped.error == "worker lost; not redelivered within 600s", reaped.error
        assert reaped.percentage == 40.0 and reaped.finished_at is not None
        assert "redelivery_deadline" not in reaped.metadata, reaped.metadata

    def test_a_job_pending_before_its_deadline_is_left_waiting(self, store: JobStore) -> None:
        job, now = requeued(store)
        later = now + timedelta(seconds=WAIT - 1)
        assert reap(handler_of(store), TIMEOUT, redelivery_timeout=WAIT, now=later) == []
        assert store.require_job(job.id).status is JobStatus.PENDING

    def test_a_pass_after_the_deadline_fails_the_job_the_reaper_requeued(
        self, store: JobStore
    ) -> None:
        job, now = requeued(store)
        [reaped] = reap(handler_of(store), TIMEOUT, now=now + timedelta(seconds=WAIT))
        assert (reaped.id, reaped.status) == (job.id, JobStatus.FAILED)
        assert reaped.error == "worker lost; not redelivered within 600s"

    def test_a_redelivered_task_resumes_its_job_and_no_deadline_fails_it(
        self, store: JobStore
    ) -> None:
        job, now = requeued(store)
        resumed = store.update_job(job.id, lambda j: rules.start(j, "w2@host", redelivery_ok=True))
        assert resumed is not None and resumed.status is JobStatus.PROCESSING
        assert "redelivery_deadline" not in resumed.metadata, resumed.metadata
        assert resumed.summary == "redelivered on w2@host" and resumed.percentage == 5.0
        assert history(store, job.id)[-1] == ("lifecycle", "start", "redelivered on w2@host")
        after = now + timedelta(seconds=WAIT + 1)
        assert reap(handler_of(store), TIMEOUT * 100, now=after) == [], (
            "expected the running job left alone")

    def test_the_redelivery_timeout_defaults_to_morag_redelivery_timeout(
        self, store: JobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MORAG_REDELIVERY_TIMEOUT", "30")
        silent_job(store, redelivery_expected=True)
        [reaped] = reap(handler_of(store), TIMEOUT)
        assert reaped.metadata["redelivery_timeout"] == 30.0, reaped.metadata
        monkeypatch.setenv("MORAG_REDELIVERY_TIMEOUT", "soon")
        with pytest.raises(ValueError, match="MORAG_REDELIVERY_TIMEOUT='soon' is not a positive"):
            Reaper(handler_of(store), TIMEOUT)


class TestOnePassAtATime:
    def test_a_pass_is_skipped_and_counted_while_another_process_holds_the_lock(
        self, store: JobStore, database_url: str
    ) -> None:
        job = silent_job(store, redelivery_expected=False)
        reaper = Reaper(handler_of(store), TIMEOUT, redelivery_timeout=WAIT)
        with holding_the_lock(database_url) as holder:
            skipped = reaper.run_once()
            assert not skipped.ran and skipped.reaped == [], skipped
            assert (reaper.passes, reaper.skipped) == (1, 1)
            assert store.require_job(job.id).status is JobStatus.PROCESSING
            holder.kill()  # killed mid-pass: the lock must not outlive it
            holder.wait(10)
        ran = until_a_pass_runs(reaper)
        assert [j.id for j in ran.reaped] == [job.id], ran
        assert reaper.reaped == 1 and reaper.skipped >= 1

    def test_postgres_reapers_of_different_schemas_do_not_wait_on_each_other(
        self, postgres_url: str
    ) -> None:
        ours = fresh_postgres_schema(postgres_url, migrate=True)
        theirs = fresh_postgres_schema(postgres_url, migrate=True)
        with JobStore(ours) as store, holding_the_lock(theirs):
            silent_job(store, redelivery_expected=False)
            done = reap_pass(handler_of(store), TIMEOUT, redelivery_timeout=WAIT)
        assert done.ran and len(done.reaped) == 1, done


HOLD_THE_LOCK = """\
import sys
from morag_jobs.store import JobStore
from morag_jobs.store.reaping import reaper_lock
with JobStore(sys.argv[1]) as store, reaper_lock(store) as held:
    print("held" if held else "busy", flush=True)
    sys.stdin.read()
"""


@contextmanager
def holding_the_lock(database_url: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the reaper's lock, as a pass in flight there would."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, database_url], cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:  # leaving it closes the pipes
        try:
            assert process.stdout is not None and process.stderr is not None
            line = process.stdout.readline().strip()
            if line != "held":
                process.kill()
                raise AssertionError(f"expected the other process to get the lock, it said "
                                     f"{line!r}: {process.stderr.read()}")
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)


def until_a_pass_runs(reaper: Reaper, timeout: float = 10.0) -> Pass:
    """The first pass that is not skipped (the server may take a moment to see a client
    die and drop its lock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = reaper.run_once()
        if done.ran:
            return done
        time.sleep(0.05)
    raise AssertionError(f"expected the lock to be free once its holder died ({timeout}s)")


class TestServe:
    def test_morag_jobs_serve_reaps_a_silent_job_while_no_worker_lives(
        self, sqlite_url: str, tmp_path: Path
    ) -> None:
        with JobStore(sqlite_url) as store:
            job = silent_job(store, redelivery_expected=False)
            log = tmp_path / "serve.log"
            with log.open("wb") as output, serving(sqlite_url, output) as server:
                reaped = wait_until_ended(store, job.id, server, log)
        assert reaped.status is JobStatus.FAILED, f"expected FAILED, got {reaped.status}"
        assert reaped.error is not None and reaped.error.startswith("worker lost"), reaped.error
        assert history(store, job.id)[-1][:2] == ("reaper", "failure")


@contextmanager
def serving(database_url: str, output: BinaryIO) -> Iterator[subprocess.Popen[bytes]]:
    """``morag-jobs serve`` on a free port of 127.0.0.1, reaping every second."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "morag_jobs", "serve", "--port", str(port),
         "--reap-timeout", "1", "--no-access-log", "--database", database_url],
        cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
        env={**os.environ, "MORAG_LOG_LEVEL": "INFO"})
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def wait_until_ended(
    store: JobStore, job_id: str, server: subprocess.Popen[bytes], log: Path,
    timeout: float = 30.0,
) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.require_job(job_id)
        if job.status.is_terminal:
            return job
        if server.poll() is not None:
            raise AssertionError(f"the server exited ({server.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"expected the server's reaper to end job {job_id} within {timeout}s; "
                         f"saw {store.require_job(job_id).status}\n{log.read_text()[-3000:]}")


class TestOnlyJobsTheReaperCanJudge:
    """Version 0 failed every silent PROCESSING job: a remote worker's, a followed log's."""

    def test_a_job_nobody_claimed_is_never_reaped(self, store: JobStore) -> None:
        handler = handler_of(store)
        job = handler.create_job(name="followed log")  # as `morag-jobs tail` makes them
        handler.apply(ProgressEvent(percent=40.0, source="log"), job.id, immediate=True)
        later = utc_now() + timedelta(days=2)
        assert reap(handler, TIMEOUT, now=later) == []
        assert store.require_job(job.id).status is JobStatus.PROCESSING

    def test_a_remote_job_without_a_lease_is_never_reaped(self, store: JobStore) -> None:
        handler = handler_of(store)
        job = handler.create_job(name="gpu box", worker_id="gpu-01")
        handler.apply(ProgressEvent(percent=10.0, source="remote", worker_id="gpu-01"),
                      job.id, immediate=True)
        assert store.require_job(job.id).claim == "remote"
        assert reap(handler, TIMEOUT, now=utc_now() + timedelta(days=2)) == []

    def test_a_remote_job_is_failed_when_its_lease_runs_out(self, store: JobStore) -> None:
        handler = handler_of(store)
        job = handler.create_job(name="gpu box", worker_id="gpu-01", lease_seconds=30.0)
        report = ProgressEvent(percent=10.0, source="remote", worker_id="gpu-01")
        first = handler.apply(report, job.id, immediate=True).job
        assert first is not None and first.lease_until is not None
        assert reap(handler, TIMEOUT, now=first.lease_until - timedelta(seconds=1)) == []
        renewed = handler.apply(ProgressEvent(percent=20.0, source="remote"), job.id,
                                immediate=True).job
        assert renewed is not None and renewed.lease_until is not None
        assert renewed.lease_until > first.lease_until, "each report renews the lease"
        assert reap(handler, TIMEOUT, now=renewed.lease_until - timedelta(seconds=1)) == []
        [expired] = reap(handler, TIMEOUT, now=renewed.lease_until + timedelta(seconds=1))
        assert (expired.id, expired.status) == (job.id, JobStatus.FAILED)
        assert expired.error == "lease expired: no report from gpu-01 for 30s"
        assert expired.percentage == 20.0, "FAILED keeps the percentage reached"

    def test_a_task_queued_and_never_started_is_failed_after_the_pending_timeout(
        self, store: JobStore
    ) -> None:
        handler = handler_of(store)
        lost = handler.create_job(name="lost", claim="queued", metadata={"task_id": "t-9"})
        created = lost.created_at
        assert created is not None
        soon = created + timedelta(seconds=59)
        assert reap(handler, TIMEOUT, pending_timeout=60, now=soon) == []
        later = created + timedelta(seconds=61)
        assert reap(handler, TIMEOUT, pending_timeout=math.inf, now=later) == [], "never"
        [failed] = reap(handler, TIMEOUT, pending_timeout=60, now=later)
        assert failed.status is JobStatus.FAILED
        assert failed.error == "never started: queued for more than 60s (task lost?)"

    def test_a_job_created_by_hand_waits_pending_forever(self, store: JobStore) -> None:
        handler = handler_of(store)
        job = handler.create_job(name="waits for a remote worker")
        later = utc_now() + timedelta(days=30)
        assert reap(handler, TIMEOUT, pending_timeout=60, now=later) == []
        assert store.require_job(job.id).status is JobStatus.PENDING
