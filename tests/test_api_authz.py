"""The authorization matrix: every route x every kind of key x own / other / unknown job.

The rule under test: the key is checked before anything else, and a job the key may not
touch answers exactly like a job that does not exist (same status, same message but for
the id, same queries), whatever state it is in. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import Api, body, running_api
from sqlalchemy import event

from morag_jobs.store import JobStatus, JobStore, MappingStore

ROUTES = ("progress", "complete", "get", "events", "stream")
KEYS = ("none", "invalid", "admin", "user", "worker")
JOBS = ("own", "other", "own-ended", "other-ended", "unknown")


def _expected(route: str, key: str, job: str) -> int:
    """What each cell must answer (the specification, written out once)."""
    if key in ("none", "invalid"):
        return 401
    reporting = route in ("progress", "complete")
    if (key == "user" and reporting) or (key == "worker" and not reporting):
        return 403  # the key's kind may not use the route at all
    if job == "unknown" or (key != "admin" and job.startswith("other")):
        return 404
    if route == "progress":
        return 409 if job.endswith("ended") else 202
    return 200  # reads; completion (a retry of the same end answers 200 too)


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    with running_api(database_url) as running:
        yield running


def _job(api: Api, key: str, which: str) -> str:
    if which == "unknown":
        return "no-such-job"
    mine = which.startswith("own") or key == "admin"
    owner = {"user_id": "alice", "worker_id": "gpu-01"} if mine else \
        {"user_id": "bob", "worker_id": "gpu-02"}
    job = api.job(name=f"secret-{which}", **owner)
    if which.endswith("ended"):
        api.handler.handle_job_completion(job.id, True, "done")
    return job.id


def _call(api: Api, route: str, job_id: str, key: str | None) -> Any:
    headers = api.auth(key) if key else {}
    base = f"/api/v1/remote-jobs/{job_id}"
    if route == "progress":
        return api.client.put(f"{base}/progress", json=body(), headers=headers)
    if route == "complete":
        return api.client.post(f"{base}/complete", json={"success": True}, headers=headers)
    if route == "stream":  # a running job's stream never ends: read only a refusal's body
        with api.client.stream("GET", f"/api/v1/jobs/{job_id}/stream",
                               headers=headers) as streamed:
            if streamed.status_code >= 400:
                streamed.read()
            return streamed
    path = {"get": "", "events": "/events"}[route]
    return api.client.get(f"/api/v1/jobs/{job_id}{path}", headers=headers)


def test_every_route_every_key_every_job(api: Api) -> None:
    keys = {"none": None, "invalid": "mj_not_a_key", "admin": api.key("admin"),
            "user": api.key("user", "alice"), "worker": api.key("worker", "gpu-01")}
    wrong: list[str] = []
    for route in ROUTES:
        for key in KEYS:
            for which in JOBS:
                job_id = _job(api, key, which)
                before = api.store.get_job(job_id)
                response = _call(api, route, job_id, keys[key])
                want = _expected(route, key, which)
                if response.status_code != want:
                    wrong.append(f"{route} {key} {which}: {response.status_code} != {want} "
                                 f"({response.text[:120]})")
                if want >= 400:
                    if "secret-" in response.text:  # read only for refusals (see _call)
                        wrong.append(f"{route} {key} {which}: a refusal shows the job")
                    if before is not None and api.settled(job_id) != before:
                        wrong.append(f"{route} {key} {which}: a refusal changed the job")
    assert not wrong, "\n".join(wrong)


def test_another_workers_ended_job_is_not_told_apart_from_no_job(api: Api) -> None:
    worker = api.key("worker", "gpu-01")
    other = api.job(worker_id="gpu-02", name="theirs")
    api.handler.handle_job_completion(other.id, True, "done")
    for route in ("progress", "complete"):
        hidden = _call(api, route, other.id, worker)
        missing = _call(api, route, "no-such-job", worker)
        assert hidden.status_code == missing.status_code == 404, route
        assert hidden.json()["detail"] == missing.json()["detail"].replace(
            "no-such-job", other.id), f"{route}: not even the message tells them apart"


def test_the_key_comes_before_the_body_on_every_reporting_route(api: Api) -> None:
    for url in ("/api/v1/remote-jobs/x/progress", "/api/v1/remote-jobs/x/complete"):
        for content in (b"not json", b"{}", b'{"success": "maybe"}'):
            response = api.client.request("PUT" if url.endswith("progress") else "POST", url,
                                          content=content)
            assert response.status_code == 401, f"{url} {content!r}: {response.status_code}"
        user = api.key("user", "alice")
        response = api.client.post(url, content=b"not json", headers=api.auth(user)) \
            if url.endswith("complete") else api.client.put(url, content=b"not json",
                                                            headers=api.auth(user))
        assert response.status_code == 403, "a key that may not report learns nothing more"


def test_a_mapped_worker_may_retry_its_completion_after_the_job_ended(api: Api) -> None:
    worker = api.key("worker", "gpu-01")
    job = api.job(name="mapped")
    api.handler.mappings.bind("worker", "gpu-01", job.id)
    first = api.complete(job.id, worker, success=True, result={"words": 3})
    assert first.status_code == 200 and first.json()["status"] == "FINISHED"
    assert MappingStore(api.store).get("worker", "gpu-01") is None, "the mapping ends with the job"
    retry = api.complete(job.id, worker, success=True, result={"words": 3})
    assert retry.status_code == 200, f"the lost answer's retry finds its job: {retry.text}"
    assert retry.json()["worker_id"] == "gpu-01", "the completing worker is on the record"
    other = api.key("worker", "gpu-02")
    assert api.complete(job.id, other, success=True).status_code == 404


def test_a_job_mapped_by_another_process_is_reportable_at_once(api: Api) -> None:
    worker = api.key("worker", "gpu-01")
    job = api.job(name="fresh")
    assert api.progress(job.id, worker).status_code == 404, "not mapped yet"
    elsewhere = JobStore(str(api.store.engine.url.render_as_string(hide_password=False)))
    try:
        MappingStore(elsewhere).set("worker", "gpu-01", job.id)  # e.g. the process that submits
    finally:
        elsewhere.close()
    response = api.progress(job.id, worker, at=1)
    assert response.status_code == 202, f"no transient refusal from a cached answer: " \
                                         f"{response.text}"
    assert api.settled(job.id).status is JobStatus.PROCESSING


def test_another_users_job_costs_the_same_queries_as_no_job(api: Api) -> None:
    alice = api.key("user", "alice")
    theirs = api.job(user_id="bob")
    api.get("/api/v1/jobs/warm-up", alice)  # key cache, connection pool
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(api.store.engine, "before_cursor_execute", record)
    try:
        for job_id in (theirs.id, "no-such-job"):
            statements.clear()
            assert api.get(f"/api/v1/jobs/{job_id}", alice).status_code == 404
            if job_id == theirs.id:
                hidden = list(statements)
    finally:
        event.remove(api.store.engine, "before_cursor_execute", record)
    assert hidden == statements and len(hidden) == 1, (
        "the owner is part of the one query: another's job is never read")


@pytest.mark.parametrize(("field", "value", "status"), [
    ("timestamp", 1772366400, 422),
    ("timestamp", "1772366400", 422),
    ("timestamp", "2026-03-01T12:00:00Z", 202),
    ("current", 291.0, 202),
    ("current", 291.5, 422),
    ("current", "291", 422),
    ("sequence", 7.0, 202),
    ("total", True, 422),
])
def test_numbers_in_reports_are_what_json_means(
    api: Api, field: str, value: Any, status: int
) -> None:
    admin = api.key("admin")
    job = api.job()
    payload = {**body(), "total": 300, field: value}
    response = api.progress(job.id, admin, payload)
    assert response.status_code == status, response.text
    if status == 422:
        assert field in response.json()["detail"]
