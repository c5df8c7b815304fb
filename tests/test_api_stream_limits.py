"""Open event streams are limited per key and per server, and give their slot back.

Against ``morag-jobs serve`` on a loopback port, because only a real server tells the
app that a client went away.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest
from api_helpers import served, sse_events
from fastapi import HTTPException

from morag_jobs import ProgressEvent
from morag_jobs.api import ApiKeys, create_app
from morag_jobs.api.stream import StreamSlots
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStore

LIMIT = 2


class Served:
    """A served API: its base URL, and its database's store and keys."""

    def __init__(self, url: str, store: JobStore) -> None:
        self.url = url
        self.store = store
        self.keys = ApiKeys(store)

    def key(self, scope: str = "admin", subject: str | None = None) -> str:
        return self.keys.create(scope, subject)[1]  # type: ignore[arg-type]

    def job_path(self, **fields: Any) -> str:
        return f"/api/v1/jobs/{self.store.create_job(**fields).id}/stream"

    @contextmanager
    def stream(self, path: str, key: str) -> Iterator[httpx.Response]:
        """A stream, open (its headers read) until the block ends; refused ones too."""
        with httpx.Client(base_url=self.url, timeout=10) as client, client.stream(
            "GET", path, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            yield response

    def serves(self, key: str) -> bool:
        """Whether the key gets a stream now (opened and closed again)."""
        with self.stream(self.job_path(), key) as response:
            return response.status_code == 200


@pytest.fixture
def api(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("MORAG_API_MAX_STREAMS_PER_KEY", str(LIMIT))
    store = JobStore(sqlite_url, create_tables=True)
    try:
        with served(sqlite_url) as (base, _):
            yield Served(base, store)
    finally:
        store.close()


def open_streams(api: Served, stack: ExitStack, key: str, count: int) -> list[httpx.Response]:
    return [stack.enter_context(api.stream(api.job_path(), key)) for _ in range(count)]


def first_event(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """The stream's events, once its first one (the snapshot: the stream is set up) is read."""
    events = sse_events(response.iter_lines())
    assert next(events)[0] in ("job", "comment"), "a stream starts with a snapshot or comment"
    return events


def eventually(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"within {seconds:g} s: {what}"
        time.sleep(0.05)


def test_a_key_past_its_limit_is_refused_with_429_and_retry_after(api: Served) -> None:
    key = api.key()
    with ExitStack() as stack:
        opened = open_streams(api, stack, key, LIMIT)
        assert [response.status_code for response in opened] == [200] * LIMIT
        for path in (api.job_path(), "/api/v1/stream"):
            with api.stream(path, key) as refused:
                assert refused.status_code == 429, f"stream {LIMIT + 1} of one key on {path}"
                refused.read()
                assert int(refused.headers["Retry-After"]) > 0, "the client is told when to retry"
                assert refused.headers["content-type"] == "application/json"
                assert f"the limit is {LIMIT} per key" in refused.json()["detail"]


def test_another_key_still_gets_its_streams(api: Served) -> None:
    full, other = api.key(), api.key("user", "alice")
    with ExitStack() as stack:
        open_streams(api, stack, full, LIMIT)
        mine = [stack.enter_context(api.stream(api.job_path(user_id="alice"), other)),
                stack.enter_context(api.stream("/api/v1/stream", other))]
        assert [response.status_code for response in mine] == [200, 200], (
            "one key's full quota takes nothing from another key")


def test_closing_a_stream_frees_its_slot(api: Served) -> None:
    key = api.key()
    with ExitStack() as stack:
        open_streams(api, stack, key, LIMIT - 1)
        with api.stream("/api/v1/stream", key) as last:
            assert last.status_code == 200
            assert not api.serves(key), "the key is at its limit"
        # The client has gone; the server notices the closed connection and lets go.
        eventually(lambda: api.serves(key), "the closed stream's slot is given back")

    def the_whole_quota_is_back() -> bool:
        with ExitStack() as stack:
            return [r.status_code for r in open_streams(api, stack, key, LIMIT)] == [200] * LIMIT

    eventually(the_whole_quota_is_back, "every closed stream's slot is given back")


def test_a_stream_that_ends_gives_its_slot_back(api: Served) -> None:
    key = api.key()
    job = api.store.create_job()
    handler = ProgressHandler(store=api.store, interval=0)
    with ExitStack() as stack:
        open_streams(api, stack, key, LIMIT - 1)
        with api.stream(f"/api/v1/jobs/{job.id}/stream", key) as ending:
            rest = first_event(ending)
            handler.apply(ProgressEvent(percent=40, source="callback"), job.id, immediate=True)
            handler.handle_job_completion(job.id, True, "done")
            events = [(kind, json.loads(data)) for kind, data in rest if kind != "comment"]
        assert events[-1] == ("end", {"job_id": job.id, "status": "FINISHED", "reason": "ended"})
        assert [data["percentage"] for kind, data in events if kind == "history"] == [40, 100]
        eventually(lambda: api.serves(key), "the ended stream's slot is given back")
    handler.close()


def test_many_streams_on_one_job_all_see_every_update(api: Served) -> None:
    """Streams of several keys on one job share its polling and each gets every event."""
    job = api.store.create_job()
    handler = ProgressHandler(store=api.store, interval=0)
    with ExitStack() as stack:
        streams = [first_event(stack.enter_context(api.stream(f"/api/v1/jobs/{job.id}/stream",
                                                              key)))
                   for key in (api.key(), api.key()) for _ in range(LIMIT)]
        for percent in (10, 60):
            handler.apply(ProgressEvent(percent=percent, source="callback"), job.id,
                          immediate=True)
        handler.handle_job_completion(job.id, True, "done")
        for rest in streams:
            events = list(rest)
            history = [json.loads(data)["percentage"] for kind, data in events
                       if kind == "history"]
            assert history == [10, 60, 100], "every stream gets the whole history, in order"
            assert events[-1][0] == "end"
    handler.close()


class TestStreamSlots:
    def test_a_slot_past_the_server_wide_limit_answers_503(self) -> None:
        slots = StreamSlots(per_key=LIMIT, total=LIMIT + 1)
        releases = [slots.take("a") for _ in range(LIMIT)] + [slots.take("b")]
        with pytest.raises(HTTPException) as refused:
            slots.take("c")
        assert refused.value.status_code == 503, "a new key is refused once the server is full"
        assert refused.value.headers and "Retry-After" in refused.value.headers
        releases[0]()
        releases[0]()
        assert slots.held() == LIMIT, "a slot is given back once, however often released"
        slots.take("c")

    def test_a_key_past_its_limit_answers_429(self) -> None:
        slots = StreamSlots(per_key=1)
        slots.take("a")
        with pytest.raises(HTTPException, match="the limit is 1 per key") as refused:
            slots.take("a")
        assert refused.value.status_code == 429
        assert slots.held("a") == 1 and slots.held("b") == 0


class TestSettings:
    def test_the_per_key_limit_comes_from_the_environment(
        self, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MORAG_API_MAX_STREAMS_PER_KEY", "3")
        app = create_app(database_url=sqlite_url)
        assert app.state.morag.stream_slots.per_key == 3

    def test_a_bad_limit_is_refused_naming_the_variable(
        self, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MORAG_API_MAX_STREAMS_PER_KEY", "eight")
        with pytest.raises(ValueError, match="MORAG_API_MAX_STREAMS_PER_KEY='eight'"):
            create_app(database_url=sqlite_url)
        with pytest.raises(ValueError, match="max_streams_per_key must be at least 1"):
            create_app(database_url=sqlite_url, max_streams_per_key=0)
