"""``POST /api/v1/jobs``: jobs for remote workers without server-side Python.

Version 0 had no route nor command to make a job or assign it: an operator had to run
``handler.create_job`` and ``register_job_mapping`` in Python on the server, and a second
mapping silently took the first job away from its worker (its reports then got 403).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from api_helpers import Api, running_api
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from morag_jobs.events import ProgressEvent, utc_now
from morag_jobs.handler import ProgressHandler
from morag_jobs.reaper import reap
from morag_jobs.store import JobStatus, JobStore


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    with running_api(database_url) as running:
        yield running


def create(api: Api, key: str, **body: object):
    return api.client.post("/api/v1/jobs", json=body, headers=api.auth(key))


def test_an_admin_makes_jobs_assigned_to_one_worker_which_reports_on_all(api: Api) -> None:
    admin, worker = api.key("admin"), api.key("worker", "gpu-01")
    made = [create(api, admin, name=f"part {n}", job_type="transcribe", worker_id="gpu-01",
                   stages={"download": [0, 10], "processing": [10, 100]})
            for n in range(3)]
    assert [r.status_code for r in made] == [201, 201, 201], [r.text for r in made]
    jobs = [r.json() for r in made]
    assert all(j["status"] == "PENDING" and j["worker_id"] == "gpu-01" for j in jobs)
    assert jobs[0]["stages"] == [["download", 0.0, 10.0], ["processing", 10.0, 100.0]]
    for job in jobs:  # one worker, many jobs at once: none taken from another
        answer = api.progress(job["id"], worker, percentage=50.0, stage="processing",
                              wait=True)
        assert answer.status_code == 200, answer.text
    assert [api.settled(j["id"]).percentage for j in jobs] == [55.0, 55.0, 55.0]
    done = api.complete(jobs[0]["id"], worker, success=True, message="done")
    assert done.status_code == 200, done.text


def test_a_user_key_makes_jobs_of_its_own_user_only(api: Api) -> None:
    user = api.key("user", "ana")
    mine = create(api, user, name="mine")
    assert mine.status_code == 201 and mine.json()["user_id"] == "ana"
    other = create(api, user, name="theirs", user_id="ben")
    assert other.status_code == 403 and "its own user" in other.json()["detail"]
    assert create(api, api.key("worker", "gpu-01"), name="x").status_code == 403
    assert api.client.post("/api/v1/jobs", json={}).status_code == 401


def test_a_taken_id_is_409_and_a_bad_body_is_422_with_a_message(api: Api) -> None:
    admin = api.key("admin")
    assert create(api, admin, job_id="fixed").status_code == 201
    taken = create(api, admin, job_id="fixed")
    assert taken.status_code == 409 and "exists already" in taken.json()["detail"]
    for bad in ({"stages": {"a": [50, 10]}}, {"lease_seconds": -5},
                {"lease_seconds": "soon"}, {"surprise": 1}, {"metadata": {"x": float("nan")}}):
        answer = api.client.post("/api/v1/jobs", content=_json(bad),
                                 headers={**api.auth(admin), "content-type": "application/json"})
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json().get("detail"), answer.text


def _json(value: object) -> str:
    return json.dumps(value)  # NaN written as NaN: the server must refuse it


def test_a_leased_job_is_failed_when_its_worker_goes_silent(api: Api) -> None:
    admin, worker = api.key("admin"), api.key("worker", "gpu-02")
    job = create(api, admin, name="leased", worker_id="gpu-02", lease_seconds=30).json()
    assert job["lease_seconds"] == 30.0 and job["claim"] == "remote"
    api.progress(job["id"], worker, percentage=20.0, wait=True)
    handler: ProgressHandler = api.handler
    assert reap(handler, 120.0) == [], "within its lease"
    [failed] = reap(handler, 120.0, now=utc_now() + timedelta(seconds=31))
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error.startswith("lease expired: no report from gpu-02")
    no_lease = create(api, admin, name="forever", worker_id="gpu-02", lease_seconds="none")
    assert no_lease.json()["lease_seconds"] is None
    assert reap(handler, 120.0, now=utc_now() + timedelta(days=9)) == []


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(
    st.sampled_from(["name", "job_type", "worker_id", "lease_seconds", "stages", "user_id",
                     "job_id", "metadata", "other"]),
    st.one_of(st.none(), st.text(max_size=20), st.integers(-5, 10**6), st.floats(),
              st.lists(st.integers(0, 100), max_size=3),
              st.dictionaries(st.text(max_size=5), st.lists(st.floats(0, 100), max_size=3),
                              max_size=3)),
    max_size=6))
@example(body={"lease_seconds": 251606331432.0})  # found by hypothesis: a 500 (date overflow)
def test_any_body_gets_201_or_a_4xx_with_a_message(api: Api, body: dict[str, object]) -> None:
    answer = api.client.post("/api/v1/jobs", content=_json(body),
                             headers={**api.auth(api.key("admin")),
                                      "content-type": "application/json"})
    assert answer.status_code in (201, 409, 422), (body, answer.status_code, answer.text)
    if answer.status_code != 201:
        assert answer.json().get("detail"), answer.text


def test_morag_jobs_create_makes_an_assigned_leased_planned_job(database_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "morag_jobs", "create", *args,
                               "--database", database_url],
                              capture_output=True, text=True, timeout=60, check=False)

    with JobStore(database_url) as setup:  # PostgreSQL: `morag-jobs db upgrade` first
        setup.upgrade()
    made = run("--name", "gpu job", "--worker", "gpu-01", "--lease", "300",
               "--stage", "download=0:10", "--stage", "processing=10:100", "--user", "ana")
    assert made.returncode == 0, made.stderr
    job_id = made.stdout.strip().splitlines()[-1]
    with JobStore(database_url) as store:
        job = store.require_job(job_id)
    assert (job.name, job.worker_id, job.user_id, job.claim) == (
        "gpu job", "gpu-01", "ana", "remote")
    assert job.lease_seconds == 300.0 and job.lease_until is not None
    assert job.stages is not None and job.stages.names == ("download", "processing")
    for bad, says in ((["--lease", "soon"], "--lease 'soon'"),
                      (["--stage", "x"], "NAME=START:END"),
                      (["--stage", "a=50:10"], "--stage")):
        refused = run(*bad)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


def test_the_owner_or_an_admin_cancels_a_job_over_http(api: Api) -> None:
    ana, ben, admin = api.key("user", "ana"), api.key("user", "ben"), api.key("admin")
    job = create(api, ana, name="long").json()
    api.handler.apply(ProgressEvent(percent=30.0), job["id"], immediate=True)

    def cancel(key: str) -> httpx.Response:
        return api.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=api.auth(key))

    assert cancel(ben).status_code == 404, "someone else's job: as if it did not exist"
    assert cancel(api.key("worker", "w")).status_code == 403
    done = cancel(ana)
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["percentage"]) == ("CANCELLED", 30.0)
    assert done.json()["summary"] == "cancelled by user ana"
    again = cancel(admin)
    assert again.status_code == 409 and "already ended (CANCELLED)" in again.json()["detail"]
