"""Resumable streams (``Last-Event-ID``) and one database poll per server process.

Against real servers: ``morag-jobs serve`` (``served``) for resuming, as a browser's
EventSource would reconnect; uvicorn in a thread for the poll count, so the statements
the app's engine runs can be counted. Writers are separate handlers on their own stores,
as Celery workers are.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from api_helpers import served, serving
from sqlalchemy import event

from morag_jobs import ProgressEvent
from morag_jobs.api import ApiKeys, create_app
from morag_jobs.api.watch import OVERLAP, FeedCursor
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStore


@dataclass(frozen=True)
class Event:
    kind: str
    data: Any
    id: str | None
    """The stream's last event id when this event arrived (what EventSource would resend)."""


def events_of(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events as EventSource reads them, ids included; comments as "comment"."""
    last_id, kind, data = None, "message", []
    for line in lines:
        if line.startswith(":"):
            yield Event("comment", line[1:].strip(), last_id)
        elif line.startswith("id:"):
            last_id = line[3:].strip()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield Event(kind, json.loads("\n".join(data)), last_id)
            kind, data = "message", []


def until(events: Iterator[Event], done: Callable[[list[Event]], bool]) -> list[Event]:
    """The events (comments left out) up to the one after which ``done`` holds."""
    got: list[Event] = []
    for item in events:
        if item.kind != "comment":
            got.append(item)
            if done(got):
                return got
    raise AssertionError(f"the stream ended first: {[e.kind for e in got]}")


def count(kind: str, wanted: int) -> Callable[[list[Event]], bool]:
    return lambda got: sum(e.kind == kind for e in got) == wanted


class Writer:
    """Another process's handler: its own store, each update written at once."""

    def __init__(self, url: str) -> None:
        self.store = JobStore(url)
        self.handler = ProgressHandler(store=self.store, interval=0)

    def progress(self, job_id: str, *percents: float) -> None:
        for percent in percents:
            self.handler.apply(ProgressEvent(percent=percent, message=f"at {percent:g}",
                                             source="callback"), job_id, immediate=True)

    def close(self) -> None:
        self.handler.close()
        self.store.close()


@pytest.fixture
def setup(database_url: str) -> Iterator[tuple[JobStore, ApiKeys, Writer]]:
    store = JobStore(database_url, create_tables=True)
    writer = Writer(database_url)
    try:
        yield store, ApiKeys(store), writer
    finally:
        writer.close()
        store.close()


def test_a_resumed_job_stream_gets_exactly_the_rows_it_missed_then_live_ones(
    database_url: str, setup: tuple[JobStore, ApiKeys, Writer]
) -> None:
    store, keys, writer = setup
    admin, job = keys.create("admin")[1], store.create_job(name="talk.mp3")
    path = f"/api/v1/jobs/{job.id}/stream"
    with served(database_url) as (base, _), httpx.Client(
            base_url=base, timeout=10, headers={"Authorization": f"Bearer {admin}"}) as client:
        with client.stream("GET", path) as first:
            events = events_of(first.iter_lines())
            assert next(events).kind == "job", "the snapshot first"
            writer.progress(job.id, 10, 20, 30)
            before = [e for e in until(events, count("history", 3)) if e.kind == "history"]
        # The client is away: three more rows are written.
        writer.progress(job.id, 40, 50, 60)
        last_id = before[-1].id
        assert last_id == str(before[-1].data["id"]), "a history event's id is its row id"
        with client.stream("GET", path, headers={"Last-Event-ID": last_id}) as again:
            assert again.status_code == 200
            events = events_of(again.iter_lines())
            replay = until(events, lambda got: got[-1].kind == "job")
            writer.progress(job.id, 70)
            writer.handler.handle_job_completion(job.id, True, "done")
            live = until(events, lambda got: got[-1].kind == "end")
    rows = store.history(job.id)
    missed = [row.id for row in rows if row.id > int(last_id)]
    history = [e for e in replay + live if e.kind == "history"]
    assert [e.data["percentage"] for e in before] == [10, 20, 30]
    assert [e.data["percentage"] for e in replay if e.kind == "history"] == [40, 50, 60], (
        "first the rows written while it was away, from the database")
    assert [e.data["id"] for e in history] == missed, "every row after the id once, in order"
    assert [e.data["percentage"] for e in history] == [40, 50, 60, 70, 100]
    snapshots = [e for e in replay + live if e.kind == "job"]
    assert snapshots[-1].data["status"] == "FINISHED" and live[-1].kind == "end"
    newest = int(last_id)
    for item in replay + live:
        if item.kind == "history":
            newest = item.data["id"]
        elif item.kind == "job":
            assert item.id == str(newest), "a snapshot's id is the last row sent before it"


def test_a_first_connection_resumes_from_last_event_id_in_the_query(
    database_url: str, setup: tuple[JobStore, ApiKeys, Writer]
) -> None:
    store, keys, writer = setup
    user, job = keys.create("user", "alice")[1], store.create_job(user_id="alice")
    writer.progress(job.id, 10, 20)
    rows = store.history(job.id)
    with served(database_url) as (base, _), httpx.Client(base_url=base, timeout=10) as client:
        params = {"access_token": user}
        with client.stream("GET", f"/api/v1/jobs/{job.id}/stream", params=params) as fresh:
            snapshot = next(e for e in events_of(fresh.iter_lines()) if e.kind != "comment")
        assert snapshot.kind == "job" and snapshot.id == str(rows[-1].id), (
            "a fresh stream starts with the snapshot, its id the newest row's")
        writer.progress(job.id, 30)
        writer.handler.handle_job_completion(job.id, True, "done")
        resumed = client.get(f"/api/v1/jobs/{job.id}/stream",
                             params={**params, "last_event_id": str(rows[0].id)})
        events = [e for e in events_of(iter(resumed.text.splitlines())) if e.kind != "comment"]
        # A header (an EventSource reconnecting) wins over the URL's first id.
        header = client.get(f"/api/v1/jobs/{job.id}/stream",
                            params={**params, "last_event_id": str(rows[0].id)},
                            headers={"Last-Event-ID": str(rows[-1].id)})
        from_header = [e for e in events_of(iter(header.text.splitlines())) if e.kind != "comment"]
    assert [e.data["percentage"] for e in events if e.kind == "history"] == [20, 30, 100]
    assert [e.kind for e in events][-2:] == ["job", "end"]
    assert [e.data["percentage"] for e in from_header if e.kind == "history"] == [30, 100]


def test_ids_that_are_not_this_streams_are_refused_in_the_query_and_ignored_in_the_header(
    database_url: str, setup: tuple[JobStore, ApiKeys, Writer]
) -> None:
    store, keys, writer = setup
    admin, job = keys.create("admin")[1], store.create_job()
    writer.handler.handle_job_completion(job.id, True, "done")
    with served(database_url) as (base, _), httpx.Client(
            base_url=base, timeout=10, headers={"Authorization": f"Bearer {admin}"}) as client:
        for path, bad in ((f"/api/v1/jobs/{job.id}/stream", "12-abc"),
                          (f"/api/v1/jobs/{job.id}/stream", "-1"),
                          ("/api/v1/stream", "abc")):
            refused = client.get(path, params={"last_event_id": bad})
            assert refused.status_code == 422, f"{path} ?last_event_id={bad}"
            assert "not an event id of this stream" in refused.json()["detail"]
        ignored = client.get(f"/api/v1/jobs/{job.id}/stream", headers={"Last-Event-ID": "x:3"})
        assert ignored.status_code == 200 and "event: end" in ignored.text, (
            "an EventSource cannot change its header: a foreign id starts afresh")


def test_a_resumed_all_jobs_stream_gets_the_jobs_changed_since_its_cursor(
    database_url: str, setup: tuple[JobStore, ApiKeys, Writer]
) -> None:
    store, keys, writer = setup
    alice = keys.create("user", "alice")[1]
    old, mine, also, theirs = (store.create_job(user_id=user, name=name) for user, name in
                               (("alice", "old"), ("alice", "mine"), ("alice", "also"),
                                ("bob", "theirs")))
    writer.progress(old.id, 5)
    time.sleep(OVERLAP.total_seconds() + 0.5)  # "old" changed well before the cursor
    with served(database_url) as (base, _), httpx.Client(
            base_url=base, timeout=10, params={"access_token": alice}) as client:
        with client.stream("GET", "/api/v1/stream") as first:
            events = events_of(first.iter_lines())
            writer.progress(mine.id, 10)
            seen = until(events, lambda got: got[-1].kind == "job"
                         and got[-1].data["id"] == mine.id)
        cursor = seen[-1].id
        assert cursor is not None and FeedCursor.parse(cursor) is not None, (
            "its id is <updated_at in epoch microseconds>-<job id>")
        # Away: two of alice's jobs and one of bob's change.
        writer.progress(mine.id, 20)
        writer.progress(also.id, 30)
        writer.progress(theirs.id, 40)
        with client.stream("GET", "/api/v1/stream", headers={"Last-Event-ID": cursor}) as again:
            events = events_of(again.iter_lines())
            resumed = until(events, lambda got: {e.data["id"]: e.data["percentage"]
                                                 for e in got if e.kind == "job"}
                            == {mine.id: 20, also.id: 30})
            writer.progress(mine.id, 50)
            live = until(events, lambda got: got[-1].kind == "job"
                         and got[-1].data["percentage"] == 50)
    ids = {e.data["id"] for e in resumed + live if e.kind == "job"}
    assert ids == {mine.id, also.id}, "the user's jobs changed since, not bob's, not older ones"
    positions = [FeedCursor.parse(e.id or "") for e in resumed + live if e.kind == "job"]
    assert all(p is not None and p >= FeedCursor.parse(cursor) for p in positions), (
        "ids never go back before the cursor resumed from")


# -- one poll per process --------------------------------------------------------------------




async def _hold(base: str, targets: list[tuple[str, str]], seconds: float,
                move: Callable[[], None]) -> tuple[list[list[Event]], int]:
    """Open a stream per (path, key), then count the app's statements while ``move``
    writes; each stream's events, and the count."""
    bodies: list[list[str]] = [[] for _ in targets]
    opened = asyncio.Event()
    ready = 0

    async def read(index: int, path: str, key: str, client: httpx.AsyncClient) -> None:
        nonlocal ready
        async with client.stream("GET", path, params={"access_token": key}) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith(("event: job", ": connected")):
                    break  # the snapshot (job stream) or the start (all-jobs stream)
            ready += 1
            if ready == len(targets):
                opened.set()
            async for line in lines:
                bodies[index].append(line)

    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=None),
                                 limits=httpx.Limits(max_connections=None)) as client:
        tasks = [asyncio.create_task(read(i, path, key, client))
                 for i, (path, key) in enumerate(targets)]
        await asyncio.wait_for(opened.wait(), 20)
        await asyncio.sleep(0.3)  # every stream past its start reads
        statements = _STATEMENTS[0]
        await asyncio.to_thread(move)
        await asyncio.sleep(seconds)
        counted = _STATEMENTS[0] - statements
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [list(events_of(iter(body))) for body in bodies], counted


_STATEMENTS = [0]


def test_many_streams_cost_the_database_what_one_does(database_url: str) -> None:
    """Sixty streams (job streams and users' all-jobs streams) are served by the one poll
    of their process: the statements it runs do not grow with them, and each stream gets
    what its key may read."""
    store = JobStore(database_url, create_tables=True)
    keys = ApiKeys(store)
    users = [f"user{n}" for n in range(6)]
    user_keys = {user: keys.create("user", user)[1] for user in users}
    admin = keys.create("admin")[1]
    jobs = {user: store.create_job(user_id=user) for user in users}
    writer = Writer(database_url)

    def counter(*_: Any) -> None:
        _STATEMENTS[0] += 1

    event.listen(store.engine, "before_cursor_execute", counter)
    app = create_app(store, stream_poll_interval=0.1, heartbeat_interval=30,
                     max_streams_per_key=100)
    step = [0]

    def move() -> None:
        step[0] += 10
        for job in jobs.values():
            writer.progress(job.id, step[0])

    one = [("/api/v1/stream", admin)]
    many = [(f"/api/v1/jobs/{jobs[users[n % 6]].id}/stream", admin) for n in range(30)] + \
           [("/api/v1/stream", user_keys[users[n % 6]]) for n in range(30)]
    state = app.state.morag
    try:
        with serving(app) as base:
            _, alone = asyncio.run(_hold(base, one, 2.0, move))
            streams, crowd = asyncio.run(_hold(base, many, 2.0, move))
            deadline = time.monotonic() + 10
            while state.watcher.followers() or state.stream_slots.held():
                assert time.monotonic() < deadline, "closed streams leave the poll and slots"
                time.sleep(0.05)
    finally:
        event.remove(store.engine, "before_cursor_execute", counter)
        writer.close()
        store.close()
    assert alone > 0, "the poll ran"
    assert crowd <= alone * 1.5 + 6, (
        f"60 streams ran {crowd} statements in 2 s where one ran {alone}: one poll serves all")
    for (path, key), events in zip(many, streams, strict=True):
        got = [e.data for e in events if e.kind in ("job", "history")]
        if path.endswith("/stream") and path.startswith("/api/v1/jobs/"):
            job_id = path.split("/")[4]
            assert [d["percentage"] for d in got if "job_id" in d] == [20], (
                "a job stream gets its job's new row")
            assert {d.get("job_id", d.get("id")) for d in got} == {job_id}
        else:
            user = next(u for u, k in user_keys.items() if k == key)
            assert {d["id"] for d in got} == {jobs[user].id}, "a user's stream: its jobs only"
            assert got[-1]["percentage"] == 20
