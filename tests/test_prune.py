"""Retention (``morag_jobs.store.prune``, ``morag-jobs prune``, ``MORAG_PRUNE_AFTER``), on
SQLite and PostgreSQL: old ended jobs go with their history and mappings, running and recent
ones stay, a parent goes with its children and a running parent's children stay, settled
webhook deliveries go; the command end to end, and the reaper's hourly prune.

Jobs are made old by writing their ``finished_at`` in the past, the way a job that ended
40 days ago looks; the reaper's passes are driven with an explicit ``now``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from handler_helpers import handler_of

from morag_jobs import settings
from morag_jobs.events import utc_now
from morag_jobs.reaper import reap_pass
from morag_jobs.store import Family, Job, JobStatus, JobStore, MappingStore, OutboxStore
from morag_jobs.store.prune import PruneResult, prune

NOW = utc_now()
OLD = NOW - timedelta(days=40)
CUTOFF = NOW - timedelta(days=30)
RECENT = NOW - timedelta(days=1)


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as job_store:
        job_store.count_jobs()  # migrated now
        yield job_store


def end(store: JobStore, job_id: str, status: JobStatus = JobStatus.FINISHED,
        at: datetime = OLD) -> None:
    """End the job with ``status`` at ``at`` (one history row)."""
    store.update_job(job_id, lambda _: ({"status": status, "finished_at": at},
                                        {"kind": "completion", "message": "ended"}))


def backdate(store: JobStore, job_id: str, at: datetime = OLD) -> None:
    """Move an ended job's (a parent's) ``finished_at`` back to ``at``; no history row."""
    store.update_job(job_id, lambda _: ({"finished_at": at}, None))


def ended(store: JobStore, status: JobStatus = JobStatus.FINISHED, *, at: datetime = OLD,
          history: int = 3) -> str:
    """A job with ``history`` history rows (the last its end), ended with ``status`` at ``at``."""
    job = store.create_job(name=f"{status.value.lower()} job")
    for step in range(history - 1):
        store.update_job(job.id, lambda _, step=step: (
            {"status": JobStatus.PROCESSING, "percentage": 10.0 * (step + 1)},
            {"message": f"step {step}"}))
    end(store, job.id, status, at)
    return job.id


def exists(store: JobStore, job_id: str) -> bool:
    return store.get_job(job_id) is not None


def family(store: JobStore, children: int = 2) -> tuple[Job, list[Job]]:
    return Family(store).create({"name": "canvas", "job_type": "group"},
                                [{"name": f"child {n}"} for n in range(children)])


# -- what goes, what stays ----------------------------------------------------------------------


def test_old_ended_jobs_go_with_their_history_and_mappings(store: JobStore) -> None:
    old = [ended(store, status) for status in
           (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED)]
    MappingStore(store).set("task", "task-1", old[0])
    done = prune(store, CUTOFF)
    assert done == PruneResult(jobs=3, history=9, deliveries=0)
    assert not any(exists(store, job_id) for job_id in old)
    assert all(store.history(job_id) == [] for job_id in old)
    assert MappingStore(store).get("task", "task-1") is None


def test_running_and_recent_jobs_stay(store: JobStore) -> None:
    pending = store.create_job(name="queued").id
    processing = store.create_job(name="running").id
    # A running job is never pruned, whatever its finished_at says.
    store.update_job(processing, lambda _: ({"status": JobStatus.PROCESSING,
                                             "finished_at": OLD}, {"message": "started"}))
    recent = ended(store, at=RECENT)
    old = ended(store)
    assert prune(store, CUTOFF) == PruneResult(jobs=1, history=3)
    assert not exists(store, old)
    for job_id in (pending, processing, recent):
        assert exists(store, job_id), job_id
    assert len(store.history(recent)) == 3 and len(store.history(processing)) == 1


def test_statuses_narrow_what_is_pruned(store: JobStore) -> None:
    finished, failed, cancelled = (ended(store, status) for status in
                                   (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED))
    done = prune(store, CUTOFF, ["finished", JobStatus.CANCELLED])
    assert done.jobs == 2
    assert exists(store, failed) and not exists(store, finished) and not exists(store, cancelled)


@pytest.mark.parametrize("statuses", [["PENDING"], ["FINISHED", "PROCESSING"], [], ["DONE"]])
def test_only_ended_statuses_may_be_pruned(store: JobStore, statuses: list[str]) -> None:
    job_id = ended(store)
    with pytest.raises(ValueError, match=r"ended|unknown job status"):
        prune(store, CUTOFF, statuses)
    assert exists(store, job_id)


def test_keep_history_deletes_only_the_history(store: JobStore) -> None:
    old, recent = ended(store), ended(store, at=RECENT)
    MappingStore(store).set("task", "task-1", old)
    assert prune(store, CUTOFF, keep_history=True) == PruneResult(jobs=0, history=3)
    assert exists(store, old) and store.history(old) == []
    assert MappingStore(store).get("task", "task-1") == old
    assert len(store.history(recent)) == 3


def test_a_dry_run_counts_without_deleting(store: JobStore) -> None:
    old = [ended(store) for _ in range(5)]
    parent, kids = family(store)
    for kid in kids:
        end(store, kid.id)
    backdate(store, parent.id)
    ended(store, at=RECENT)
    before = store.count_jobs()
    counted = prune(store, CUTOFF, batch=2, dry_run=True)  # several batches, none deleted
    assert counted == PruneResult(jobs=8, history=5 * 3 + 2, dry_run=True)
    assert store.count_jobs() == before and all(len(store.history(j)) == 3 for j in old)
    assert prune(store, CUTOFF, batch=2) == PruneResult(jobs=8, history=17)
    assert store.count_jobs() == before - 8


def test_batches_delete_everything_that_qualifies(store: JobStore) -> None:
    old = [ended(store, history=1) for _ in range(7)]
    assert prune(store, CUTOFF, batch=3) == PruneResult(jobs=7, history=7)
    assert not any(exists(store, job_id) for job_id in old)


# -- parents and children -------------------------------------------------------------------


def test_a_running_parents_children_stay(store: JobStore) -> None:
    parent, (first, second) = family(store)
    end(store, first.id)  # ended long ago; the parent runs on with its second child
    assert store.require_job(parent.id).status is JobStatus.PROCESSING
    assert prune(store, CUTOFF) == PruneResult()
    assert exists(store, first.id) and exists(store, second.id) and exists(store, parent.id)
    assert len(store.history(first.id)) == 1


def test_an_old_ended_parent_goes_with_its_children(store: JobStore) -> None:
    parent, kids = family(store, children=3)
    for kid in kids:
        end(store, kid.id, JobStatus.FAILED if kid is kids[0] else JobStatus.FINISHED)
    backdate(store, parent.id)  # it ended with its last child, now long ago
    assert store.require_job(parent.id).status is JobStatus.FAILED
    # --status FAILED judges the parent; its FINISHED children go with it.
    assert prune(store, CUTOFF, ["FAILED"]) == PruneResult(jobs=4, history=3)
    assert not any(exists(store, job.id) for job in [parent, *kids])


def test_an_ended_parent_stays_while_a_child_runs_or_ended_recently(store: JobStore) -> None:
    parent, (running, kid) = family(store)
    other, (recent,) = family(store, children=1)
    end(store, kid.id)
    end(store, parent.id, JobStatus.CANCELLED)  # cancelled; one child still PENDING
    end(store, recent.id, at=RECENT)
    backdate(store, other.id)
    assert prune(store, CUTOFF) == PruneResult()
    for job in (parent, running, kid, other, recent):
        assert exists(store, job.id), job.name


def test_a_child_never_goes_without_its_parent(store: JobStore) -> None:
    parent, (kid,) = family(store, children=1)
    end(store, kid.id)  # the parent ended with it, just now: it is recent
    assert store.require_job(parent.id).status is JobStatus.FINISHED
    assert prune(store, CUTOFF) == PruneResult()
    assert exists(store, kid.id)


# -- webhook deliveries -----------------------------------------------------------------------


def test_settled_deliveries_older_than_the_cutoff_go(store: JobStore) -> None:
    outbox = OutboxStore(store)
    ids = {}
    for name in ("pending", "delivered", "failed"):
        job = store.create_job(name=name, webhook_url=f"https://example.com/{name}")
        outbox.enqueue(job, "job.finished", {"job": name}, lambda url: f"msg-{url}")
        [row] = outbox.list_deliveries(job_id=job.id)
        ids[name] = row.id
    outbox.record_delivered(ids["delivered"], 200)
    outbox.record_failed(ids["failed"], 0, 500, "gave up")
    assert prune(store, utc_now() - timedelta(hours=1)).deliveries == 0  # all recent
    later = utc_now() + timedelta(days=1)
    assert prune(store, later, dry_run=True).deliveries == 2
    assert prune(store, later, batch=1).deliveries == 2
    assert [row.status for row in outbox.list_deliveries()] == ["pending"]


# -- the command --------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "morag_jobs", "prune", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_command_prunes_and_reports_counts(store: JobStore, database_url: str) -> None:
    finished, failed, recent = ended(store), ended(store, JobStatus.FAILED), ended(
        store, at=RECENT)
    running = store.create_job(name="queued").id
    dry = run("--older-than", "30d", "--dry-run", "--json", "--database", database_url)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["jobs"] == 2 and exists(store, finished)
    assert "would delete 2 job(s), 6 history row(s)" in dry.stderr

    done = run("--older-than", "720h", "--status", "FINISHED", "--json", "--database",
               database_url)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert {k: counts[k] for k in ("jobs", "history", "deliveries", "dry_run")} == {
        "jobs": 1, "history": 3, "deliveries": 0, "dry_run": False}
    assert done.stderr.strip() == "deleted 1 job(s), 3 history row(s), 0 webhook delivery(ies)"
    assert not exists(store, finished)
    assert all(exists(store, job_id) for job_id in (failed, recent, running))

    kept = run("--older-than", str(30 * 86400), "--keep-history", "--database", database_url)
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == "" and "3 history row(s)" in kept.stderr
    assert exists(store, failed) and store.history(failed) == []


@pytest.mark.parametrize("duration", ["30x", "-5d", "0", "d", "1.5.2h", "99999999d"])
def test_a_bad_duration_is_one_line_and_exit_2(duration: str, sqlite_url: str) -> None:
    result = run("--older-than", duration, "--database", sqlite_url)
    assert result.returncode == 2, result
    assert result.stderr.startswith("morag-jobs: --older-than:") and result.stderr.count(
        "\n") == 1, result.stderr


def test_a_running_status_is_one_line_and_exit_2(sqlite_url: str) -> None:
    result = run("--older-than", "30d", "--status", "FINISHED,PROCESSING",
                 "--database", sqlite_url)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert "PROCESSING is not an ended status" in result.stderr


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("3600", 3600), ("45s", 45),
    ("1.5H", 5400),
])
def test_durations(text: str, seconds: float) -> None:
    assert settings.parse_duration(text) == seconds


def test_prune_after_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MORAG_PRUNE_AFTER", raising=False)
    assert settings.prune_after() is None
    for never in ("", "none"):
        monkeypatch.setenv("MORAG_PRUNE_AFTER", never)
        assert settings.prune_after() is None
    monkeypatch.setenv("MORAG_PRUNE_AFTER", "30d")
    assert settings.prune_after() == 30 * 86400
    monkeypatch.setenv("MORAG_PRUNE_AFTER", "a month")
    with pytest.raises(ValueError, match="MORAG_PRUNE_AFTER='a month'"):
        settings.prune_after()


# -- the reaper -------------------------------------------------------------------------------


def test_the_reaper_prunes_at_most_hourly_when_told_to(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handler_of(store)
    future = utc_now() + timedelta(days=60)  # what ends now is 60 days old then
    first, waiting = ended(store), store.create_job(name="queued").id
    recent = ended(store, at=future - timedelta(days=1))

    monkeypatch.delenv("MORAG_PRUNE_AFTER", raising=False)
    assert reap_pass(handler, 120, redelivery_timeout=600, now=future).ran
    assert exists(store, first), "pruned without MORAG_PRUNE_AFTER"

    monkeypatch.setenv("MORAG_PRUNE_AFTER", "30d")
    assert reap_pass(handler, 120, redelivery_timeout=600, now=future).ran
    assert not exists(store, first)
    assert exists(store, waiting) and exists(store, recent)

    second = ended(store)
    reap_pass(handler, 120, redelivery_timeout=600, now=future + timedelta(minutes=59))
    assert exists(store, second), "pruned twice within the hour"
    reap_pass(handler, 120, redelivery_timeout=600, now=future + timedelta(minutes=61))
    assert not exists(store, second)
    assert exists(store, waiting) and exists(store, recent)
