"""The HTTP API: remote progress and completion, reads, keys and scopes, errors, metrics.

Every test runs on a real SQLite file and on the real PostgreSQL (``database_url``),
in-process through FastAPI's TestClient with the app's lifespan running.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from api_helpers import Api, body, running_api
from fastapi.testclient import TestClient
from sqlalchemy import select

from morag_jobs.api import create_app
from morag_jobs.api.auth import hash_key
from morag_jobs.handler import ProgressHandler
from morag_jobs.stages import StagePlan
from morag_jobs.store import JobStatus, JobStore
from morag_jobs.store.keys import API_KEYS

PLAN = StagePlan({"download": (0, 10), "processing": (10, 70), "indexing": (70, 100)})


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    with running_api(database_url) as running:
        yield running


@pytest.fixture
def admin(api: Api) -> str:
    return api.key("admin")


# -- reporting progress ----------------------------------------------------------------------


def test_progress_is_queued_then_written_through_the_handler(api: Api, admin: str) -> None:
    job = api.job(name="talk.mp3")
    response = api.progress(job.id, admin, percentage=42.5, message="transcribing")
    assert response.status_code == 202, f"a report should be accepted: {response.text}"
    assert response.json() == {"job_id": job.id, "outcome": "queued", "job": None}
    written = api.settled(job.id)
    assert (written.percentage, written.summary, written.status) == (
        42.5, "transcribing", JobStatus.PROCESSING), "the report should land on the job"
    assert [e.source for e in api.store.history(job.id)] == ["remote"], (
        "the history should record the update as coming from a remote worker")
    assert api.handler.stats.by_source["remote", "applied"] == 1, "the handler counts it"


def test_wait_true_writes_now_and_answers_with_the_job(api: Api, admin: str) -> None:
    job = api.job()
    response = api.progress(job.id, admin, wait=True, percentage=30, message="step 3")
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["outcome"] == "applied"
    assert data["job"]["percentage"] == 30.0 and data["job"]["summary"] == "step 3", (
        "?wait=true should answer with the job as written")
    assert api.store.require_job(job.id).percentage == 30.0, "written before answering"


def test_stage_and_counts_go_through_the_stage_plan(api: Api, admin: str) -> None:
    job = api.job(stages=PLAN)
    response = api.progress(job.id, admin, wait=True, percentage=50, stage="processing",
                            current=5, total=10)
    assert response.status_code == 200, response.text
    written = api.store.require_job(job.id)
    assert written.percentage == pytest.approx(40.0), "processing 50% is 40% overall"
    assert (written.stage, written.current, written.total) == ("processing", 5, 10)


def test_a_retried_report_with_the_same_sequence_changes_nothing(api: Api, admin: str) -> None:
    job = api.job()
    first = api.progress(job.id, admin, wait=True, percentage=20, sequence=5, at=1)
    assert first.status_code == 200
    before = api.store.require_job(job.id)
    again = api.progress(job.id, admin, percentage=20, sequence=5, at=1)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text
    older = api.progress(job.id, admin, percentage=25, sequence=4, at=2)
    assert older.status_code == 200 and older.json()["outcome"] == "stale", older.text
    assert api.settled(job.id) == before, "a retry or an older report must change nothing"


def test_a_retry_queued_but_not_yet_written_is_recognised(api: Api, admin: str) -> None:
    job = api.job()
    assert api.progress(job.id, admin, percentage=10, sequence=1).status_code == 202
    retry = api.progress(job.id, admin, percentage=10, sequence=1)
    assert retry.json()["outcome"] == "duplicate", "the process remembers what it queued"
    assert api.settled(job.id).version == 1, "one write for the report and its retry"


def test_a_retried_report_with_the_same_timestamp_changes_nothing(api: Api, admin: str) -> None:
    job = api.job()
    assert api.progress(job.id, admin, wait=True, percentage=60, at=7).status_code == 200
    before = api.store.require_job(job.id)
    retry = api.progress(job.id, admin, wait=True, percentage=60, at=7)
    assert retry.status_code == 200 and retry.json()["outcome"] == "duplicate", retry.text
    assert api.store.require_job(job.id) == before, "no new write, no new history row"
    assert len(api.store.history(job.id)) == 1


INVALID_REPORTS = [
    b'{"percentage": NaN, "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": Infinity, "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": -Infinity, "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": 1e999, "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": -0.5, "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": 100.01, "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": "50", "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": true, "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": null, "message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"message": "m", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": 5, "message": 7, "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": 5, "message": "m", "timestamp": "yesterday"}',
    b'{"percentage": 5, "message": "m", "timestamp": "2026-03-01T12:00:00Z", "extra": 1}',
    b'{"percentage": 5, "message": "m", "timestamp": "2026-03-01T12:00:00Z", "sequence": 1.5}',
    b'{"percentage": 5, "message": "m", "timestamp": "2026-03-01T12:00:00Z", "total": 0}',
    b'{"percentage": 5, "message": "a\\u0000b", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": 5, "message": "\\ud800", "timestamp": "2026-03-01T12:00:00Z"}',
    b'{"percentage": 5, "message": "m", "timestamp": "2026-03-01T12:00:00Z", "stage": ""}',
    b'[50]',
    b'{"percentage": 5,',
    b'',
]


def test_invalid_reports_are_refused_with_422_and_change_nothing(api: Api, admin: str) -> None:
    job = api.job()
    for raw in INVALID_REPORTS:
        for wait in ("", "?wait=true"):
            response = api.client.put(
                f"/api/v1/remote-jobs/{job.id}/progress{wait}", content=raw,
                headers={**api.auth(admin), "Content-Type": "application/json"},
            )
            assert response.status_code == 422, f"{raw!r} should be refused: {response.text}"
            detail = response.json()["detail"]
            assert isinstance(detail, str) and "fix it" in detail, "the error says what to do"
    assert api.settled(job.id) == job, "a refused report must not touch the job"


def test_a_body_over_the_size_limit_is_refused_with_413(database_url: str) -> None:
    with running_api(database_url, max_body_bytes=1024) as api:
        admin, job = api.key("admin"), api.job()
        url = f"/api/v1/remote-jobs/{job.id}/progress"
        declared = api.client.put(url, json=body(message="x" * 2000), headers=api.auth(admin))
        assert declared.status_code == 413, "Content-Length over the limit is refused"
        assert "larger than 1024 bytes" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:
            yield b'{"percentage": 5, "message": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'", "timestamp": "2026-03-01T12:00:00Z"}'

        chunked = api.client.put(url, content=chunks(), headers=api.auth(admin))
        assert chunked.status_code == 413, "a chunked body is counted as it arrives"
        small = api.client.put(url, content=iter([json.dumps(body()).encode()]),
                               headers=api.auth(admin))
        assert small.status_code == 202, f"a small chunked body passes: {small.text}"
        assert api.settled(job.id).percentage == 50.0


def test_progress_on_an_unknown_job_is_404(api: Api, admin: str) -> None:
    response = api.progress("no-such-job", admin)
    assert response.status_code == 404 and "no job 'no-such-job'" in response.json()["detail"]
    assert api.store.get_job("no-such-job") is None, "a report never creates a job"
    assert api.complete("no-such-job", admin, success=True).status_code == 404


def test_a_job_id_the_store_cannot_hold_is_422(api: Api, admin: str) -> None:
    response = api.progress("x" * 65, admin)
    assert response.status_code == 422, "job ids are at most 64 characters"
    assert api.progress("a%01b", admin).status_code == 422, "no control characters"


def test_progress_on_an_ended_job_is_409_and_changes_nothing(api: Api, admin: str) -> None:
    job = api.job()
    assert api.complete(job.id, admin, success=True, message="done").status_code == 200
    ended = api.store.require_job(job.id)
    for wait in (False, True):
        response = api.progress(job.id, admin, wait=wait, percentage=10, at=99)
        assert response.status_code == 409, f"an ended job takes no progress: {response.text}"
        assert "already ended (FINISHED)" in response.json()["detail"]
    assert api.settled(job.id) == ended


def test_a_job_ended_by_another_process_refuses_progress(database_url: str) -> None:
    with running_api(database_url, cache_ttl=0.2) as api:
        _ended_elsewhere(api, api.key("admin"))


def _ended_elsewhere(api: Api, admin: str) -> None:
    job = api.job()
    assert api.progress(job.id, admin, wait=True).status_code == 200  # cached as running
    elsewhere = ProgressHandler(store=api.store)  # another process's handler
    assert elsewhere.handle_job_completion(job.id, False, "killed elsewhere")
    time.sleep(0.3)  # the job snapshot behind the checks is at most cache_ttl old
    response = api.progress(job.id, admin, percentage=90, at=5)
    assert response.status_code == 409, response.text
    assert api.settled(job.id).percentage == 50.0, "the ended job keeps its percentage"


# -- completion ------------------------------------------------------------------------------


def test_completion_finishes_the_job_and_stores_the_result(api: Api, admin: str) -> None:
    job = api.job()
    api.progress(job.id, admin, percentage=80)
    response = api.complete(job.id, admin, success=True, message="all done",
                            result={"pages": 12, "lang": "en"})
    assert response.status_code == 200, response.text
    data = response.json()
    assert (data["status"], data["percentage"], data["summary"]) == ("FINISHED", 100.0,
                                                                     "all done")
    assert data["metadata"]["result"] == {"pages": 12, "lang": "en"}, "result is in metadata"
    assert api.store.require_job(job.id).metadata["result"] == {"pages": 12, "lang": "en"}
    retry = api.complete(job.id, admin, success=True, message="all done")
    assert retry.status_code == 200 and retry.json()["version"] == data["version"], (
        "a retried completion answers the job again and writes nothing")
    opposite = api.complete(job.id, admin, success=False, message="oops")
    assert opposite.status_code == 409, "a finished job cannot fail afterwards"


def test_failure_keeps_the_percentage_and_records_the_error(api: Api, admin: str) -> None:
    job = api.job()
    api.progress(job.id, admin, wait=True, percentage=35)
    response = api.complete(job.id, admin, success=False, message="GPU out of memory")
    assert response.status_code == 200, response.text
    failed = api.store.require_job(job.id)
    assert (failed.status, failed.percentage, failed.error) == (
        JobStatus.FAILED, 35.0, "GPU out of memory"), "FAILED keeps the percentage reached"


def test_invalid_completions_are_refused_with_422(api: Api, admin: str) -> None:
    job = api.job()
    for payload in ({"success": "yes"}, {"success": True, "extra": 1}, {"message": "no"},
                    {"success": True, "result": [1, 2]}, {"success": True, "message": 5},
                    {"success": True, "result": {"a\u0000": 1}}):
        response = api.complete(job.id, admin, **payload)
        assert response.status_code == 422, f"{payload} should be refused: {response.text}"
    assert api.store.require_job(job.id) == job


def test_a_result_with_nan_inside_is_refused(api: Api, admin: str) -> None:
    job = api.job()
    raw = b'{"success": true, "result": {"score": NaN}}'
    response = api.client.post(f"/api/v1/remote-jobs/{job.id}/complete", content=raw,
                               headers={**api.auth(admin), "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert api.store.require_job(job.id).status is JobStatus.PENDING


# -- keys and scopes -------------------------------------------------------------------------


def test_missing_or_invalid_keys_are_401_with_a_bearer_challenge(api: Api, admin: str) -> None:
    job = api.job()
    key_id = admin.split("_")[1]
    revoked = api.key("admin")
    api.keys.revoke(revoked.split("_")[1])
    cases = {
        "no header": {},
        "basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
        "empty bearer": {"Authorization": "Bearer "},
        "not a key": {"Authorization": "Bearer hello"},
        "unknown id": {"Authorization": "Bearer mjk_000000000000_secret"},
        "wrong secret": {"Authorization": f"Bearer mjk_{key_id}_wrong"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }
    for name, headers in cases.items():
        for method, url, payload in (
            ("PUT", f"/api/v1/remote-jobs/{job.id}/progress", body()),
            ("POST", f"/api/v1/remote-jobs/{job.id}/complete", {"success": True}),
            ("GET", f"/api/v1/jobs/{job.id}", None),
            ("GET", "/api/v1/jobs", None),
        ):
            response = api.client.request(method, url, json=payload, headers=headers)
            assert response.status_code == 401, f"{name} on {method} {url}: {response.text}"
            assert response.headers["www-authenticate"].startswith("Bearer"), (
                "a 401 must carry WWW-Authenticate: Bearer")
            assert "morag-jobs keys create" in response.json()["detail"]
    assert api.settled(job.id) == job, "nothing was written by unauthenticated requests"


def test_the_key_is_checked_before_the_body(api: Api) -> None:
    response = api.client.put("/api/v1/remote-jobs/x/progress", content=b"not json")
    assert response.status_code == 401, "an anonymous caller learns nothing about validation"


def test_a_worker_key_reports_only_on_jobs_assigned_or_mapped_to_it(api: Api) -> None:
    worker = api.key("worker", "gpu-01")
    assigned = api.job(worker_id="gpu-01")
    mapped = api.job()
    api.handler.mappings.bind("worker", "gpu-01", mapped.id)
    other = api.job(worker_id="gpu-02")
    assert api.progress(assigned.id, worker).status_code == 202, "assigned: jobs.worker_id"
    assert api.progress(mapped.id, worker).status_code == 202, "mapped: job_mappings"
    refused = api.progress(other.id, worker)
    assert refused.status_code == 404, "another worker's job looks like no job at all"
    assert "assigned or mapped to worker 'gpu-01'" in refused.json()["detail"]
    assert api.complete(other.id, worker, success=True).status_code == 404
    assert api.complete(assigned.id, worker, success=True).status_code == 200
    assert api.settled(other.id) == other, "the forbidden job is untouched"
    assert api.get(f"/api/v1/jobs/{assigned.id}", worker).status_code == 403, (
        "worker keys report; they do not read")
    assert api.get("/api/v1/jobs", worker).status_code == 403


def test_a_user_key_reads_only_its_users_jobs_and_cannot_report(api: Api) -> None:
    alice, bob = api.key("user", "alice"), api.key("user", "bob")
    mine = api.job(user_id="alice", name="mine")
    theirs = api.job(user_id="bob", name="theirs")
    assert api.get(f"/api/v1/jobs/{mine.id}", alice).json()["name"] == "mine"
    hidden = api.get(f"/api/v1/jobs/{theirs.id}", alice)
    missing = api.get("/api/v1/jobs/no-such-job", alice)
    assert hidden.status_code == missing.status_code == 404, (
        "someone else's job looks exactly like a job that does not exist")
    assert hidden.json()["detail"] == missing.json()["detail"].replace(
        "no-such-job", theirs.id), "not even the message tells them apart"
    assert api.get(f"/api/v1/jobs/{theirs.id}/events", alice).status_code == 404
    assert api.get(f"/api/v1/jobs/{theirs.id}/stream", alice).status_code == 404
    listed = api.get("/api/v1/jobs", alice).json()
    assert [j["id"] for j in listed["items"]] == [mine.id] and listed["total"] == 1
    assert api.get("/api/v1/jobs", alice, user="bob").json()["total"] == 0, (
        "filtering on another user gives an empty page")
    assert api.get("/api/v1/jobs", bob).json()["items"][0]["id"] == theirs.id
    assert api.progress(mine.id, alice).status_code == 403, "user keys cannot report"
    assert api.complete(mine.id, alice, success=True).status_code == 403
    assert api.settled(mine.id) == mine


def test_an_admin_key_reads_and_reports_on_every_job(api: Api, admin: str) -> None:
    jobs = [api.job(user_id=f"u{n}", worker_id=f"w{n}") for n in range(3)]
    for job in jobs:
        assert api.progress(job.id, admin).status_code == 202
        assert api.get(f"/api/v1/jobs/{job.id}", admin).status_code == 200
    assert api.get("/api/v1/jobs", admin).json()["total"] == 3


def test_keys_are_stored_hashed_and_their_use_is_recorded(api: Api) -> None:
    record, key = api.keys.create("worker", "gpu-07", "render box")
    with api.store.engine.connect() as connection:
        row = connection.execute(select(API_KEYS).where(API_KEYS.c.id == record.id)).one()
    assert row.key_hash == hash_key(key) and key not in repr(tuple(row)), (
        "only the key's hash is stored")
    assert row.last_used_at is None
    job = api.job(worker_id="gpu-07")
    assert api.progress(job.id, key).status_code == 202
    deadline = time.monotonic() + 5
    while (used := api.keys.get(record.id)) is not None and used.last_used_at is None:
        assert time.monotonic() < deadline, "last_used_at is written within the cache's refresh"
        time.sleep(0.05)
    assert re.fullmatch(r"mjk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key), key


def test_a_revoked_key_is_refused_within_the_cache_ttl(database_url: str) -> None:
    with running_api(database_url, cache_ttl=0.2) as api:
        _revoked_elsewhere(api)


def _revoked_elsewhere(api: Api) -> None:
    record, key = api.keys.create("admin")
    job = api.job()
    assert api.progress(job.id, key).status_code == 202
    other_process = create_app(api.store).state.morag.keys  # a revocation from elsewhere
    other_process.revoke(record.id)
    time.sleep(0.3)
    assert api.progress(job.id, key, at=3).status_code == 401, (
        "a revoked key stops working within cache_ttl")


# -- reading ---------------------------------------------------------------------------------


def test_list_jobs_filters_paginates_and_sorts(api: Api, admin: str) -> None:
    for n in range(6):
        job = api.job(name=f"job{n}", job_type="audio" if n % 2 else "video",
                      user_id="alice" if n < 3 else "bob")
        if n:
            api.progress(job.id, admin, wait=True, percentage=n * 10)
    page = api.get("/api/v1/jobs", admin, type="audio", sort="-percentage").json()
    assert [j["name"] for j in page["items"]] == ["job5", "job3", "job1"]
    assert api.get("/api/v1/jobs", admin, user="alice").json()["total"] == 3
    pending = api.get("/api/v1/jobs", admin, status="PENDING").json()
    assert [j["name"] for j in pending["items"]] == ["job0"]
    both = api.client.get("/api/v1/jobs?status=PENDING&status=PROCESSING&limit=2&offset=2"
                          "&sort=percentage", headers=api.auth(admin)).json()
    assert (both["total"], both["limit"], both["offset"]) == (6, 2, 2)
    assert [j["name"] for j in both["items"]] == ["job2", "job3"]
    for bad in ({"status": "DONE"}, {"limit": 0}, {"limit": 501}, {"offset": -1},
                {"sort": "name"}, {"user": "a\x00b"}):
        response = api.get("/api/v1/jobs", admin, **bad)
        assert response.status_code == 422, f"{bad} should be refused: {response.text}"


def test_job_events_page_through_the_history(api: Api, admin: str) -> None:
    job = api.job()
    for n in range(1, 6):
        api.progress(job.id, admin, wait=True, percentage=n * 10, message=f"step {n}", at=n)
    first = api.get(f"/api/v1/jobs/{job.id}/events", admin, limit=3).json()
    assert [e["message"] for e in first["items"]] == ["step 1", "step 2", "step 3"]
    rest = api.get(f"/api/v1/jobs/{job.id}/events", admin, limit=3,
                   after_id=first["next_after_id"]).json()
    assert [e["percentage"] for e in rest["items"]] == [40.0, 50.0]
    assert rest["next_after_id"] is None, "the last page says so"


def test_healthz_and_routes_answer_503_when_the_database_is_unusable(
    api: Api, tmp_path: Any
) -> None:
    ok = api.client.get("/healthz")
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    empty = JobStore(f"sqlite:///{tmp_path}/empty.db", create_tables=False)
    with TestClient(create_app(empty)) as client:
        response = client.get("/healthz")
        unusable = client.get("/api/v1/jobs", headers=api.auth("mjk_0123456789ab_secret"))
    empty.close()
    assert response.status_code == 503, "a database without the job table is not healthy"
    assert "morag-jobs db upgrade" in response.json()["detail"]
    assert unusable.status_code == 503 and unusable.headers["retry-after"] == "5", (
        "a database error is a 503 that says to retry, never a 500")
    assert "empty.db" not in response.text, "without a key, no database URL"


def test_healthz_shows_the_database_to_an_admin_key_only(api: Api) -> None:
    """A URL names a user, a host and a database: only an admin sees which one."""
    anonymous = api.client.get("/healthz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok",
                                                                  "database": None}
    assert api.store.url not in anonymous.text
    for key in (api.key("user", "ana"), api.key("worker", "w"), "mjk_0123456789ab_wrong"):
        seen = api.client.get("/healthz", headers=api.auth(key))
        assert seen.status_code == 200 and seen.json()["database"] is None, seen.text
    admin = api.client.get("/healthz", headers=api.auth(api.key("admin")))
    assert admin.json() == {"status": "ok", "database": api.store.url}


# -- metrics ---------------------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_updates_by_source_latency_and_jobs_by_status(
    api: Api, admin: str
) -> None:
    job = api.job()
    api.progress(job.id, admin, wait=True, percentage=10, sequence=1)
    api.progress(job.id, admin, percentage=10, sequence=1)  # a retry
    api.client.put(f"/api/v1/remote-jobs/{job.id}/progress", headers=api.auth(admin),
                   content=b'{"percentage": NaN, "message": "m", "timestamp": "2026-03-01"}')
    api.client.put(f"/api/v1/remote-jobs/{job.id}/progress", json=body(percentage=-1),
                   headers=api.auth(admin))
    api.job()
    text = api.client.get("/metrics").text
    assert _metric(text, "morag_jobs_updates_total", source="remote", outcome="applied",
                   result="applied") == 1
    assert _metric(text, "morag_jobs_updates_total", outcome="duplicate",
                   result="ignored") == 1
    assert _metric(text, "morag_jobs_updates_total", outcome="invalid",
                   result="rejected") == 2, "422s are counted as rejected"
    assert _metric(text, "morag_jobs_update_request_seconds_count", route="progress") == 4
    assert _metric(text, "morag_jobs_jobs", status="PROCESSING") == 1
    assert _metric(text, "morag_jobs_jobs", status="PENDING") == 1
    fresh = create_app(api.store).state.morag.metrics.render().decode()
    assert _metric(fresh, "morag_jobs_update_request_seconds_count", route="progress") == 0, (
        "each app has its own registry")


# -- OpenAPI ---------------------------------------------------------------------------------

EXPECTED_ERRORS = {
    ("put", "/api/v1/remote-jobs/{job_id}/progress"): {401, 403, 404, 409, 413, 422, 503},
    ("post", "/api/v1/remote-jobs/{job_id}/complete"): {401, 403, 404, 409, 413, 422, 503},
    ("get", "/api/v1/jobs"): {401, 403, 422, 503},
    ("get", "/api/v1/jobs/{job_id}"): {401, 403, 404, 422, 503},
    ("get", "/api/v1/jobs/{job_id}/events"): {401, 403, 404, 422, 503},
    ("get", "/api/v1/jobs/{job_id}/stream"): {401, 403, 404, 422, 503},
    ("get", "/api/v1/stream"): {401, 403, 503},
    ("get", "/healthz"): {503},
    ("get", "/metrics"): set(),
}


def test_openapi_documents_every_route_with_its_error_responses(api: Api) -> None:
    schema = api.app.openapi()
    operations = {(method, path): op for path, item in schema["paths"].items()
                  for method, op in item.items()}
    mine = {key: op for key, op in operations.items() if key in EXPECTED_ERRORS}
    assert set(mine) == set(EXPECTED_ERRORS), "every API route is in the schema"
    components = schema["components"]["schemas"]
    for key, op in mine.items():
        codes = {int(code) for code in op["responses"]}
        assert EXPECTED_ERRORS[key] <= codes, f"{key} should document {EXPECTED_ERRORS[key]}"
        for code in EXPECTED_ERRORS[key]:
            ref = op["responses"][str(code)]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in components, f"{key} {code}: {ref} is defined"
        ok = [c for c in codes if c < 300]
        assert ok and all(op["responses"][str(c)].get("content") for c in ok), (
            f"{key} documents what it answers")
        assert op.get("summary") and op.get("description"), f"{key} is described"
        if key[1].startswith("/api/"):
            assert op.get("security"), f"{key} documents its bearer key"
    progress = mine["put", "/api/v1/remote-jobs/{job_id}/progress"]
    body_ref = progress["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/ProgressUpdate"
    fields = components["ProgressUpdate"]["properties"]
    assert {"percentage", "message", "timestamp", "stage", "current", "total", "sequence"} \
        == set(fields)
    assert components["ProgressUpdate"]["additionalProperties"] is False
    assert {p["name"] for p in progress["parameters"]} == {"job_id", "wait"}
    assert {"202", "200"} <= set(progress["responses"])


def test_a_report_from_a_clock_far_ahead_does_not_freeze_the_job(api: Api, admin: str) -> None:
    """Year 2999 from a worker's broken clock is taken as now, by the retry check too."""
    job = api.job()
    ahead = api.progress(job.id, admin, percentage=10.0, message="ahead",
                         payload={**body(10.0, "ahead"), "timestamp": "2999-01-01T00:00:00Z"})
    assert ahead.status_code == 202
    for n, percentage in enumerate((20.0, 30.0), start=1):
        response = api.progress(job.id, admin, percentage=percentage,
                                timestamp=_now_iso(), message=f"on time {n}")
        assert response.json()["outcome"] == "queued", response.text
    settled = api.settled(job.id)
    assert settled.percentage == 30.0 and settled.summary == "on time 2"
    assert api.handler.stats.future_timestamps >= 1


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
