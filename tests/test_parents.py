"""Parent jobs: the weighted mean of the children, kept on every child write, in O(1).

On SQLite and PostgreSQL; the concurrency test writes children from several processes at
once and checks that the parent's running sum equals the sum computed from all children.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from api_helpers import running_api

from morag_jobs.events import ProgressEvent
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import Family, Job, JobStatus, JobStore
from morag_jobs.store.parents import CANVAS_FATAL


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, migrate=True) as job_store:
        yield job_store


@pytest.fixture
def handler(store: JobStore) -> Iterator[ProgressHandler]:
    running = ProgressHandler(store, interval=0)
    yield running
    running.close()


def family(store: JobStore, n: int = 3, **child: object) -> tuple[Job, list[Job]]:
    return Family(store).create({"name": "canvas", "job_type": "group"},
                                [{"name": f"part {i}", **child} for i in range(n)])


def move(handler: ProgressHandler, job_id: str, percent: float) -> None:
    result = handler.apply(ProgressEvent(percent=percent), job_id, immediate=True)
    assert result.accepted, result


def test_the_parent_is_the_weighted_mean_of_its_children(
    store: JobStore, handler: ProgressHandler
) -> None:
    parent, kids = Family(store).create(
        {"name": "canvas"}, [{"name": "big", "weight": 3.0}, {"name": "small"}])
    assert (parent.children, parent.children_weight, parent.status) == (2, 4.0, JobStatus.PENDING)
    assert [k.parent_id for k in kids] == [parent.id, parent.id]
    move(handler, kids[0].id, 40.0)
    now = store.require_job(parent.id)
    assert now.status is JobStatus.PROCESSING and now.percentage == pytest.approx(30.0)
    move(handler, kids[1].id, 80.0)
    assert store.require_job(parent.id).percentage == pytest.approx((3 * 40 + 80) / 4)
    assert Family(store).mean(parent.id) == pytest.approx((3 * 40 + 80) / 4)


def test_the_parent_finishes_when_every_child_did(store: JobStore,
                                                  handler: ProgressHandler) -> None:
    parent, kids = family(store)
    for kid in kids[:2]:
        assert handler.handle_job_completion(kid.id, True, "ok")
    middle = store.require_job(parent.id)
    assert (middle.status, middle.children_done) == (JobStatus.PROCESSING, 2)
    assert middle.percentage == pytest.approx(200 / 3)
    handler.handle_job_completion(kids[2].id, True, "ok")
    done = store.require_job(parent.id)
    assert (done.status, done.percentage, done.summary) == (
        JobStatus.FINISHED, 100.0, "3 children finished")
    assert done.finished_at is not None


def test_a_group_with_a_failed_child_fails_when_the_others_ended(
    store: JobStore, handler: ProgressHandler
) -> None:
    parent, kids = family(store)
    move(handler, kids[0].id, 50.0)
    handler.handle_job_completion(kids[0].id, False, "ValueError: bad input")
    assert store.require_job(parent.id).status is JobStatus.PROCESSING, (
        "a group goes on: its other tasks still run")
    for kid in kids[1:]:
        handler.handle_job_completion(kid.id, True)
    failed = store.require_job(parent.id)
    assert (failed.status, failed.error) == (JobStatus.FAILED, "1 of 3 children failed")
    assert failed.percentage == pytest.approx((50 + 100 + 100) / 3), "the percentage is kept"


def test_a_chain_fails_at_once_with_its_members_error(store: JobStore,
                                                      handler: ProgressHandler) -> None:
    parent, kids = family(store, metadata={CANVAS_FATAL: True})
    handler.handle_job_completion(kids[0].id, True)
    handler.handle_job_completion(kids[1].id, False, "OSError: disk full")
    failed = store.require_job(parent.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error == "part 1 FAILED: OSError: disk full"
    handler.handle_job_completion(kids[2].id, True)
    assert store.require_job(parent.id).status is JobStatus.FAILED, "an ended parent stays"


def test_cancelling_the_parent_cancels_its_running_children(
    store: JobStore, handler: ProgressHandler
) -> None:
    parent, kids = family(store)
    handler.handle_job_completion(kids[0].id, True)
    move(handler, kids[1].id, 30.0)
    assert handler.handle_job_cancellation(parent.id, "stop the batch")
    statuses = [store.require_job(k.id).status for k in kids]
    assert statuses == [JobStatus.FINISHED, JobStatus.CANCELLED, JobStatus.CANCELLED]
    assert store.require_job(parent.id).status is JobStatus.CANCELLED


def _writer(url: str, job_ids: list[str], steps: int) -> None:
    with JobStore(url) as store:
        handler = ProgressHandler(store, interval=0)
        for step in range(1, steps + 1):
            for job_id in job_ids:
                handler.apply(ProgressEvent(percent=100.0 * step / steps), job_id,
                              immediate=True)
        handler.close()


def test_children_written_at_once_by_several_processes_lose_nothing(
    store: JobStore, database_url: str
) -> None:
    parent, kids = family(store, n=8)
    ids = [k.id for k in kids]
    seen: list[float] = []
    context = multiprocessing.get_context("spawn")
    # Two processes per child set, overlapping: the same children raced from two sides.
    procs = [context.Process(target=_writer, args=(database_url, ids[i % 2::2], 12))
             for i in range(4)]
    for proc in procs:
        proc.start()
    while any(proc.is_alive() for proc in procs):
        seen.append(store.require_job(parent.id).percentage)
        time.sleep(0.01)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    final = store.require_job(parent.id)
    assert final.progress_sum == pytest.approx(sum(store.require_job(i).percentage for i in ids))
    assert final.percentage == pytest.approx(100.0) == pytest.approx(Family(store).mean(parent.id))
    assert seen == sorted(seen), "the parent never went back"


def test_the_api_lists_a_parents_children_and_the_cli_counts_them(database_url: str) -> None:
    with running_api(database_url) as api:
        parent = api.handler.create_job(name="batch", user_id="ana", children=[
            {"name": f"part {i}", "user_id": "ana"} for i in range(3)])
        ana = api.key("user", "ana")
        page = api.get(f"/api/v1/jobs/{parent.id}/children", ana, limit=2)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["total"] == 3 and [j["name"] for j in body["items"]] == ["part 0", "part 1"]
        assert all(j["parent_id"] == parent.id for j in body["items"])
        assert api.get(f"/api/v1/jobs/{parent.id}/children", api.key("user", "ben")
                       ).status_code == 404
        kid = body["items"][0]["id"]
        api.handler.handle_job_completion(kid, False, "boom")
    shown = subprocess.run([sys.executable, "-m", "morag_jobs", "status", parent.id,
                            "--database", database_url], capture_output=True, text=True,
                           timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "1 of 3 ended, 1 failed" in shown.stdout, shown.stdout
