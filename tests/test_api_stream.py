"""Server-Sent Events: a job's updates, written by another process's handler, until it ends.

The writer in these tests is a separate ``ProgressHandler`` with its own store and
engine, as a Celery worker would be; the stream only sees what reaches the database.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from api_helpers import Api, running_api, served, sse_events

from morag_jobs import ProgressEvent
from morag_jobs.api import ApiKeys, watch
from morag_jobs.events import utc_now
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStore


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    with running_api(database_url, stream_poll_interval=0.05, heartbeat_interval=0.2) as running:
        yield running


def _report_elsewhere(url: str, job_id: str, percents: list[float], done: threading.Event) -> None:
    """Another process: its own store and handler write progress, then complete the job."""
    store = JobStore(url)
    handler = ProgressHandler(store=store, interval=0)
    try:
        for percent in percents:
            time.sleep(0.15)
            event = ProgressEvent(percent=percent, message=f"at {percent:g}", source="callback")
            handler.apply(event, job_id, immediate=True)
        time.sleep(0.15)
        handler.handle_job_completion(job_id, True, "finished")
    finally:
        handler.close()
        store.close()
        done.set()


def test_job_stream_pushes_every_update_until_the_job_ends(api: Api, database_url: str) -> None:
    admin, job = api.key("admin"), api.job(name="talk.mp3")
    done = threading.Event()
    writer = threading.Thread(target=_report_elsewhere,
                              args=(database_url, job.id, [10, 50, 90], done))
    events: list[tuple[str, Any]] = []
    with api.client.stream("GET", f"/api/v1/jobs/{job.id}/stream",
                           headers=api.auth(admin)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        writer.start()
        for event, data in sse_events(response.iter_lines()):
            events.append((event, json.loads(data) if event != "comment" else data))
    writer.join(10)
    assert done.is_set(), "the writer finished"
    kinds = [kind for kind, _ in events if kind != "comment"]
    assert kinds[0] == "job" and events[0][1]["status"] == "PENDING", "a snapshot comes first"
    assert kinds[-1] == "end" and events[-1][1]["status"] == "FINISHED", (
        "the stream ends after the terminal state")
    history = [data["percentage"] for kind, data in events if kind == "history"]
    assert history == [10.0, 50.0, 90.0, 100.0], "every applied update is pushed, in order"
    snapshots = [data for kind, data in events if kind == "job"]
    assert snapshots[-1]["status"] == "FINISHED" and snapshots[-1]["percentage"] == 100.0
    versions = [data["version"] for data in snapshots]
    assert versions == sorted(set(versions)), "snapshots only move forward"


def test_stream_of_an_ended_job_sends_its_state_and_ends(api: Api) -> None:
    admin, job = api.key("admin"), api.job()
    api.handler.handle_job_cancellation(job.id, "revoked")
    with api.client.stream("GET", f"/api/v1/jobs/{job.id}/stream",
                           headers=api.auth(admin)) as response:
        events = [(kind, json.loads(data)) for kind, data in sse_events(response.iter_lines())]
    assert [kind for kind, _ in events] == ["job", "end"]
    assert events[1][1] == {"job_id": job.id, "status": "CANCELLED", "reason": "ended"}


def test_a_quiet_stream_sends_heartbeat_comments(api: Api) -> None:
    admin, job = api.key("admin"), api.job()
    started = time.monotonic()
    with api.client.stream("GET", f"/api/v1/jobs/{job.id}/stream",
                           headers=api.auth(admin)) as response:
        for kind, text in sse_events(response.iter_lines()):
            if kind == "comment":
                assert text == "ping"
                break
    assert time.monotonic() - started < 5, "a ping within the heartbeat interval"


def test_access_token_is_accepted_on_the_stream_routes_only(api: Api) -> None:
    admin, job = api.key("admin"), api.job()
    api.handler.handle_job_completion(job.id, True, "done")
    streamed = api.client.get(f"/api/v1/jobs/{job.id}/stream", params={"access_token": admin})
    assert streamed.status_code == 200, "EventSource sends the key as ?access_token="
    assert "event: end" in streamed.text
    for method, url in (("GET", f"/api/v1/jobs/{job.id}"), ("GET", "/api/v1/jobs"),
                        ("PUT", f"/api/v1/remote-jobs/{job.id}/progress")):
        response = api.client.request(method, url, params={"access_token": admin})
        assert response.status_code == 401, f"{method} {url} takes the key as a header only"
    assert api.client.get("/api/v1/stream", params={"access_token": "mjk_x_y"}).status_code \
        == 401, "an invalid token is refused"
    for spelled in ("%61ccess_token", "access%5Ftoken"):
        disguised = api.client.get(f"/api/v1/jobs/{job.id}/stream?{spelled}={admin}")
        assert disguised.status_code == 401, f"{spelled}: only the exact name authenticates"


def test_worker_keys_cannot_stream(api: Api) -> None:
    worker, job = api.key("worker", "w1"), api.job(worker_id="w1")
    for url in (f"/api/v1/jobs/{job.id}/stream", "/api/v1/stream"):
        assert api.client.get(url, params={"access_token": worker}).status_code == 403


def test_all_jobs_stream_shows_a_user_only_their_jobs(database_url: str) -> None:
    """Against ``morag-jobs serve`` over real HTTP, as the dashboard's EventSource would."""
    store = JobStore(database_url, create_tables=True)
    keys = ApiKeys(store)
    alice = keys.create("user", "alice")[1]
    mine, theirs = store.create_job(user_id="alice"), store.create_job(user_id="bob")
    handler = ProgressHandler(store=store, interval=0)
    seen: list[dict[str, Any]] = []
    with served(database_url) as (base, _), httpx.stream(
        "GET", f"{base}/api/v1/stream", params={"access_token": alice}, timeout=10
    ) as response:
        assert response.status_code == 200
        for step in (1, 2, 3):
            for job in (theirs, mine):
                handler.apply(ProgressEvent(percent=step * 10, source="callback"), job.id,
                              immediate=True)
        for kind, data in sse_events(response.iter_lines()):
            if kind == "job":
                seen.append(json.loads(data))
                if seen[-1]["id"] == mine.id and seen[-1]["percentage"] == 30.0:
                    break
    handler.close()
    store.close()
    assert {job["id"] for job in seen} == {mine.id}, "bob's job never shows in alice's stream"
    assert seen[-1]["percentage"] == 30.0, "the latest state arrives"


def test_streams_whose_clients_fall_behind_their_inbox_read_what_they_missed(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher keeps a bounded inbox per stream; past it (here: any batch at all) the
    stream is told it missed some and reads them from the database itself, missing none."""
    monkeypatch.setattr(watch, "INBOX_CHARS", 10)
    with running_api(database_url, stream_poll_interval=0.05, heartbeat_interval=0.2) as api:
        admin, first, second = api.key("admin"), api.job(), api.job()
        writer = ProgressHandler(store=api.store, interval=0)
        with api.client.stream("GET", "/api/v1/stream", headers=api.auth(admin)) as every, \
                api.client.stream("GET", f"/api/v1/jobs/{first.id}/stream",
                                  headers=api.auth(admin)) as one:
            events = sse_events(one.iter_lines())
            assert next(events)[0] == "job", "the snapshot"
            for percent in (10, 20, 30):
                for job in (first, second):
                    writer.apply(ProgressEvent(percent=percent, source="callback"), job.id,
                                 immediate=True)
            writer.handle_job_completion(first.id, True, "done")
            history = [json.loads(data)["percentage"] for kind, data in events
                       if kind == "history"]
            assert history == [10, 20, 30, 100], "the job stream read every row it missed"
            latest: dict[str, float] = {}
            for kind, data in sse_events(every.iter_lines()):
                if kind == "job":
                    job = json.loads(data)
                    latest[job["id"]] = job["percentage"]
                if latest == {first.id: 100.0, second.id: 30.0}:
                    break
        writer.close()


def test_a_write_stamped_behind_the_poll_still_reaches_the_streams(api: Api) -> None:
    """A writer whose clock runs 30 s behind stamps ``updated_at`` before the poll's
    cursor (and its overlap): its history row, read by id, brings the job along."""
    admin, job, other = api.key("admin"), api.job(), api.job()
    writer = ProgressHandler(store=api.store, interval=0)
    with api.client.stream("GET", f"/api/v1/jobs/{job.id}/stream",
                           headers=api.auth(admin)) as one, \
            api.client.stream("GET", "/api/v1/stream", headers=api.auth(admin)) as every:
        events = sse_events(one.iter_lines())
        assert next(events)[0] == "job"
        writer.apply(ProgressEvent(percent=10, source="callback"), other.id, immediate=True)
        late = utc_now() - timedelta(seconds=30)
        api.store.update_job(job.id, lambda _: ({"percentage": 60.0, "summary": "late clock",
                                                 "updated_at": late}, {}))
        got, deadline = [], time.monotonic() + 10
        for kind, data in events:  # pings come every 0.2 s
            assert time.monotonic() < deadline, f"the late write reaches the job stream: {got}"
            if kind in ("job", "history"):
                got.append((kind, json.loads(data)["percentage"]))
                if kind == "job":
                    break
        assert got == [("history", 60.0), ("job", 60.0)]
        deadline = time.monotonic() + 10
        for kind, data in sse_events(every.iter_lines()):  # pings come every 0.2 s
            assert time.monotonic() < deadline, "the late write reaches the all-jobs stream"
            if kind == "job" and json.loads(data)["id"] == job.id \
                    and json.loads(data)["percentage"] == 60.0:
                break
    writer.close()
