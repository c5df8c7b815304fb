"""``task-progress`` events: what Flower, ``celery events`` and monitors of one's own see.

A real in-process worker (``start_worker``) on the tests' private Redis (database 14)
and a real ``app.events.Receiver`` on the test's own connection, each event also fed to
Celery's own ``celery.events.state.State`` (what Flower and ``celery events`` keep).

Each test builds a Celery app of its own with ``install()``: a worker that stops closes
the runtime it ran, and ``install`` ties its signals to one runtime per app. The
process's default runtime (``tests/celery_app.py``'s) is put back afterwards.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from morag_jobs.celery import install, job_context, progress_callback, report_progress, submit
from morag_jobs.celery.runtime import TASK_PROGRESS, Runtime, RuntimeConfig
from morag_jobs.stages import StagePlan
from morag_jobs.store import JobStatus, JobStore
from morag_jobs.task.runtime import default_runtime, set_default_runtime
from tests.celery_app import BROKER_URL, fresh_postgres_schema, history, wait_for_job
from tests.services import own_redis_keys

pytestmark = [pytest.mark.celery, pytest.mark.redis, pytest.mark.postgres]

PLAN = StagePlan({"download": (0, 10), "processing": (10, 70), "indexing": (70, 100)})
EVENTS_INTERVAL = 0.4  # task_events_interval: several writes fall inside each one
STAGED = "morag_test_events.staged"


def staged(segments: int = 8, pause: float = 0.15, tail: float = 0.8) -> str:
    """Three stages; a stage-relative bar would go 100, then 12.5 ... 100, then 50."""
    report_progress(100, stage="download", message="downloaded")
    time.sleep(pause)
    on_progress = progress_callback(stage="processing")
    for segment in range(1, segments + 1):
        on_progress(segment / segments, f"segment {segment} of {segments}")
        time.sleep(pause)
    report_progress(50, stage="indexing", message="indexing")
    time.sleep(tail)  # long enough for the indexing write to be announced
    return "done"


@pytest.fixture(scope="module")
def job_db(postgres_url: str) -> str:
    return fresh_postgres_schema(postgres_url)


@pytest.fixture(scope="module")
def store(job_db: str) -> Iterator[JobStore]:
    with JobStore(job_db) as job_store:
        yield job_store


@pytest.fixture(scope="module")
def broker() -> Iterator[redis.Redis]:
    with own_redis_keys(BROKER_URL) as client:
        yield client


@pytest.fixture
def make_app(job_db: str, broker: redis.Redis) -> Iterator[Callable[..., Celery]]:
    """A new app with the ``staged`` task, installed on the test database."""
    previous = default_runtime()

    def make(**settings: Any) -> Celery:
        name = f"morag_events_{uuid.uuid4().hex[:8]}"
        app = Celery(name, broker=BROKER_URL, backend=BROKER_URL)
        app.conf.update(broker_connection_retry_on_startup=True, result_expires=600,
                        task_default_queue=name, worker_prefetch_multiplier=1)
        app.task(name=STAGED)(staged)
        install(app, job_db, interval=0.05, celery_progress=False, reap_timeout=0,
                task_events_interval=EVENTS_INTERVAL, **settings)
        return app

    try:
        yield make
    finally:
        set_default_runtime(previous)


class Capture:
    """A ``Receiver`` on its own connection in a thread: every event, and Celery's
    ``State`` of the cluster as the events build it."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self.state = app.events.State()
        self.task_states: dict[str, list[str]] = {}
        self._seen = threading.Condition()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="test-receiver", daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self._on})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on(self, event: dict[str, Any]) -> None:
        self.state.event(event)
        if event["type"].startswith("task-"):
            task = self.state.tasks.get(event["uuid"])
            if task is not None:
                self.task_states.setdefault(event["uuid"], []).append(task.state)
        with self._seen:
            self.events.append(event)
            self._seen.notify_all()

    def wait(self, found: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        with self._seen:
            return self._seen.wait_for(lambda: any(found(e) for e in self.events), timeout)

    def of(self, task_id: str, event_type: str) -> list[dict[str, Any]]:
        with self._seen:
            return [e for e in self.events if e["type"] == event_type and e.get("uuid") == task_id]

    def start(self) -> None:
        """Listen, and return once an event sent from here has come back."""
        self._thread.start()
        token = uuid.uuid4().hex
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self.app.events.default_dispatcher() as dispatcher:
                dispatcher.send("morag-ping", token=token)
            if self.wait(lambda e: e.get("token") == token, 0.3):
                return
        raise AssertionError("the receiver never heard an event sent to it")

    def sync(self) -> None:
        """Wait until every event sent before this call has arrived (one behind them)."""
        token = uuid.uuid4().hex
        with self.app.events.default_dispatcher() as dispatcher:
            dispatcher.send("morag-ping", token=token)
        assert self.wait(lambda e: e.get("token") == token, 10), "the receiver fell silent"

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)


@contextmanager
def listening(app: Celery) -> Iterator[Capture]:
    capture = Capture(app)
    capture.start()
    try:
        yield capture
    finally:
        capture.stop()


def run_staged(app: Celery, capture: Capture, store: JobStore) -> tuple[str, str]:
    """Submit the staged task, wait for its result; (job id, task id)."""
    job = submit(app.tasks[STAGED], job_type="morag_test.events", stages=PLAN)
    task_id = job.metadata["task_id"]
    assert job.async_result.get(timeout=30) == "done"
    done = wait_for_job(store, job.id, lambda j: j.status.is_terminal, "the job to end")
    assert done.status is JobStatus.FINISHED, done.status
    assert len(history(store, job.id, "progress")) >= 5, (
        "expected the task's progress in the job table: there was something to announce")
    return job.id, task_id


@pytest.mark.parametrize("switch", ["-E", "worker_send_task_events"])
def test_a_worker_sending_task_events_announces_the_jobs_overall_progress(
    make_app: Callable[..., Celery], store: JobStore, switch: str
) -> None:
    app = make_app()
    options: dict[str, Any] = {}
    if switch == "-E":
        options["task_events"] = True  # what `celery worker -E` passes the worker
    else:
        app.conf.worker_send_task_events = True
    with listening(app) as capture, start_worker(
        app, pool="solo", perform_ping_check=False, shutdown_timeout=30, **options
    ) as worker:
        job_id, task_id = run_staged(app, capture, store)
        assert capture.wait(lambda e: e["type"] == "task-succeeded" and e["uuid"] == task_id,
                            10), "expected Celery's own task events from a worker with events"
        capture.sync()
        progress = capture.of(task_id, TASK_PROGRESS)
        states = capture.task_states.get(task_id, [])
        final = capture.state.tasks[task_id]

    percents = [e["percent"] for e in progress]
    assert len(set(percents)) >= 3, f"expected the bar to move in several events: {percents}"
    assert percents == sorted(percents), f"the bar went back (stage-relative?): {percents}"
    assert any(10.0 < e["percent"] < 70.0 and e["stage"] == "processing" for e in progress), (
        f"expected overall percentages inside the processing band 10..70: {percents}")
    # The last report (indexing 50% = 85%) may fall inside the interval after the one before.
    assert max(percents) >= 70.0, f"expected the overall scale past processing: {percents}"
    for event in progress:
        assert (event["current"], event["total"]) == (event["percent"], 100), event
        assert event["job_id"] == job_id and event["hostname"] == worker.hostname, event
        assert isinstance(event["description"], str) and event["description"], event
    stamps = [e["timestamp"] for e in progress]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    assert all(gap >= EVENTS_INTERVAL * 0.9 for gap in gaps), (
        f"expected at most one event per {EVENTS_INTERVAL}s for the job: gaps {gaps}")
    assert "PROGRESS" in states, f"expected Celery's State to show PROGRESS: {states}"
    assert final.state == "SUCCESS" and final.percent == percents[-1], (
        f"expected the last percent on the task in Celery's State: {final.__dict__}")


def test_a_worker_sending_no_task_events_announces_no_progress(
    make_app: Callable[..., Celery], store: JobStore
) -> None:
    app = make_app()
    assert not app.conf.worker_send_task_events
    with listening(app) as capture, start_worker(
        app, pool="solo", perform_ping_check=False, shutdown_timeout=30
    ):
        _, task_id = run_staged(app, capture, store)
        capture.sync()
        assert capture.of(task_id, TASK_PROGRESS) == [], "a worker without -E sent progress"
        assert capture.of(task_id, "task-succeeded") == []


def test_task_events_false_turns_the_events_off_on_a_worker_that_sends_them(
    make_app: Callable[..., Celery], store: JobStore
) -> None:
    app = make_app(task_events=False)
    runtime = default_runtime()
    assert isinstance(runtime, Runtime) and runtime.config.task_events is False
    with listening(app) as capture, start_worker(
        app, pool="solo", perform_ping_check=False, shutdown_timeout=30, task_events=True
    ):
        _, task_id = run_staged(app, capture, store)
        assert capture.wait(lambda e: e["type"] == "task-succeeded" and e["uuid"] == task_id,
                            10), "expected Celery's own task events from a worker with -E"
        capture.sync()
        assert capture.of(task_id, TASK_PROGRESS) == [], "task_events=False still sent them"


def test_a_broker_that_refuses_events_costs_one_try_and_never_stops_the_progress(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = Celery("morag_events_dead", broker=f"redis://127.0.0.1:{port}/0",
                  broker_connection_timeout=1.0)
    runtime = Runtime(RuntimeConfig(database_url=sqlite_url, interval=30.0,
                                    celery_progress=False, task_events_interval=0.0), app=dead)
    runtime.attach_worker("worker@nowhere", task_events=True)
    with JobStore(sqlite_url, create_tables=True) as store:
        job = store.create_job(name="refused")
        try:
            with caplog.at_level(logging.WARNING, logger="morag_jobs"), job_context(
                job.id, task_id="task-1", runtime=runtime
            ):
                report_progress(30, message="first")
                runtime.flush()
                first = store.require_job(job.id)
                report_progress(60, message="second")
                started = time.monotonic()
                runtime.flush()
                second_took = time.monotonic() - started
            second = store.require_job(job.id)
        finally:
            runtime.close()
    assert (first.percentage, second.percentage) == (30.0, 60.0), (
        "expected progress written whatever became of the events")
    refused = [r for r in caplog.records if "task-progress event" in r.getMessage()]
    assert len(refused) == 1, f"expected one try, then a pause: {[r.getMessage() for r in refused]}"
    assert second_took < 0.5, f"expected no second try during the pause, took {second_took:.2f}s"
