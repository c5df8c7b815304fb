"""ProgressHandler under database faults, on a dedicated PostgreSQL database per test.

Connections are killed while progress flows, and the database refuses connections for
a few seconds (``ALLOW_CONNECTIONS false``) while progress and a completion arrive. The
handler must never raise into the reporting code, and no completion may be lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from handler_helpers import progress_history
from sqlalchemy.pool import NullPool

from morag_jobs import ProgressEvent
from morag_jobs.compat import ProgressHandler
from morag_jobs.store import JobStatus, JobStore
from tests.services import admin_engine, create_database, drop_database

pytestmark = pytest.mark.postgres

KILL_OTHERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


@dataclass
class FaultDatabase:
    url: str
    name: str
    admin: sa.Engine  # AUTOCOMMIT, connected to the ``postgres`` database


@pytest.fixture
def fault_db() -> Iterator[FaultDatabase]:
    """A fresh database of its own, migrated; always reopened and dropped at the end."""
    admin = admin_engine()
    url, name = create_database(admin, "morag_fault")
    try:
        with JobStore(url) as store:
            store.upgrade()
        yield FaultDatabase(url, name, admin)
    finally:
        drop_database(admin, name)
        admin.dispose()


@contextmanager
def outage(db: FaultDatabase) -> Iterator[None]:
    """The database refuses every connection, and the open ones are cut, until the block ends."""
    with db.admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS false')
        try:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                ),
                {"name": db.name},
            )
            yield
        finally:
            conn.exec_driver_sql(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS true')


@contextmanager
def connection_killer(url: str, every: float) -> Iterator[Callable[[], int]]:
    """Terminate every other connection to the database every ``every`` seconds."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    stop = threading.Event()
    killed = [0]

    def run() -> None:
        with engine.connect() as conn:
            while not stop.wait(every):
                killed[0] += sum(1 for (ok,) in conn.execute(sa.text(KILL_OTHERS)) if ok)

    thread = threading.Thread(target=run, name="connection-killer", daemon=True)
    thread.start()
    try:
        yield lambda: killed[0]
    finally:
        stop.set()
        thread.join(timeout=10)
        engine.dispose()


@contextmanager
def opened_handler(url: str, **options: float) -> Iterator[ProgressHandler]:
    with JobStore(url) as store:
        handler = ProgressHandler(store=store, **options)  # type: ignore[arg-type]
        try:
            yield handler
        finally:
            handler.close()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_killed_connections_lose_no_progress_and_no_completion(fault_db: FaultDatabase) -> None:
    with JobStore(fault_db.url) as store:
        store.create_job(job_id="killed")
    began = time.monotonic()
    with opened_handler(fault_db.url, interval=0.05, sync_timeout=20) as handler:
        with connection_killer(fault_db.url, every=0.02) as killed:
            for n in range(1, 301):
                event = ProgressEvent(percent=n / 3.1, message=f"step {n}", source="callback")
                assert handler.apply(event, "killed"), f"event {n} was refused"
                time.sleep(0.008)
            completed = handler.handle_job_completion("killed", True, "done despite kills")
            kills = killed()
        handler.flush(timeout=15)
        write_errors = handler.stats.write_errors

    assert kills > 0, "the killer should have cut the handler's connections"
    assert write_errors > 0, "some kills should have hit a write in flight (not only idle ones)"
    assert completed is True, "the completion was retried until it landed"
    with JobStore(fault_db.url) as store:
        job = store.require_job("killed")
        history = store.history("killed")
    assert (job.status, job.percentage, job.summary) == (
        JobStatus.FINISHED,
        100.0,
        "done despite kills",
    )
    assert [e.kind for e in history].count("completion") == 1
    last_progress = [e for e in history if e.kind == "progress"][-1]
    assert last_progress.message == "step 300", (
        f"the last progress before the completion landed, got {last_progress.message!r} "
        f"({kills} connections killed, {write_errors} write errors)"
    )
    assert time.monotonic() - began < 30


def test_an_outage_queues_progress_and_the_completion_until_the_database_returns(
    fault_db: FaultDatabase,
) -> None:
    with JobStore(fault_db.url) as store:
        store.create_job(job_id="outage")
    with opened_handler(fault_db.url, interval=0.05, sync_timeout=1.0) as handler:
        for n in range(1, 21):
            handler.apply(ProgressEvent(percent=float(n), message=f"step {n}"), "outage")
        handler.flush()
        with outage(fault_db):
            down_at = time.monotonic()
            for n in range(21, 41):
                accepted = handler.apply(
                    ProgressEvent(percent=float(n), message=f"step {n}"), "outage"
                )
                assert accepted, "progress is accepted (kept in memory) while the database is down"
                time.sleep(0.02)
            completed = handler.handle_job_completion("outage", True, "finished after outage")
            assert completed in (True, False)
            time.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))
        handler.flush(timeout=15)
        with JobStore(fault_db.url) as store:
            landed = wait_for(
                lambda: store.require_job("outage").status is JobStatus.FINISHED, timeout=15
            )
        write_errors = handler.stats.write_errors

    assert completed is False, "during a 3 s outage a 1 s sync_timeout queues the completion"
    assert landed, "the queued completion was written once the database came back"
    assert write_errors > 0, "the failed writes were counted"
    with JobStore(fault_db.url) as store:
        job = store.require_job("outage")
        progress = progress_history(store, "outage")
        kinds = [e.kind for e in store.history("outage")]
    assert (job.status, job.percentage, job.summary) == (
        JobStatus.FINISHED,
        100.0,
        "finished after outage",
    )
    assert progress[-1].message == "step 40", "the last progress before the completion landed"
    assert kinds[-1] == "completion" and kinds.count("completion") == 1


def test_progress_reported_after_a_queued_completion_is_not_applied(
    fault_db: FaultDatabase,
) -> None:
    with JobStore(fault_db.url) as store:
        store.create_job(job_id="late")
    with opened_handler(fault_db.url, interval=0.05, sync_timeout=0.5) as handler:
        handler.apply(ProgressEvent(percent=40.0, message="before"), "late")
        handler.flush()
        with outage(fault_db):
            assert handler.handle_job_completion("late", False, "crashed") is False
            handler.apply(ProgressEvent(percent=90.0, message="after the end"), "late")
            time.sleep(1.0)
        handler.flush(timeout=15)

    with JobStore(fault_db.url) as store:
        job = store.require_job("late")
        history = store.history("late")
    assert job.status is JobStatus.FAILED
    assert [(e.kind, e.message) for e in history] == [
        ("progress", "before"),
        ("failure", "crashed"),
    ], "the completion was reported first: progress sent after it is late, not applied before it"
    assert job.percentage == 40.0, "FAILED keeps the percentage reached when it failed"


def test_no_reporting_call_raises_while_the_database_is_down(fault_db: FaultDatabase) -> None:
    with JobStore(fault_db.url) as store:
        store.create_job(job_id="down")
    raised: dict[str, str] = {}
    with opened_handler(fault_db.url, interval=0.05, sync_timeout=0.5, mapping_ttl=0) as handler:
        handler.mappings.bind("worker", "gpu-down", "down")
        calls: dict[str, Callable[[], object]] = {
            "process_log_line": lambda: handler.process_log_line(
                "Processing... 10%", job_id="down"
            ),
            "process_log_lines": lambda: handler.process_log_lines(
                ["Processing... 11%"], job_id="down"
            ),
            "process_remote_worker_progress": lambda: handler.process_remote_worker_progress(
                "gpu-down", 12.0, "remote"
            ),
            "process_celery_task_progress": lambda: handler.process_celery_task_progress(
                "task-down", 13.0, "celery", user_id="u1"
            ),
            "sync_job_with_logs": lambda: handler.sync_job_with_logs("down", ["Processing... 14%"]),
            "apply(immediate=True)": lambda: handler.apply(
                ProgressEvent(percent=15.0), "down", immediate=True
            ),
            "handle_job_error": lambda: handler.handle_job_error("down", "gave up"),
        }
        with outage(fault_db):
            for name, call in calls.items():
                try:
                    call()
                except Exception as error:
                    raised[name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        handler.flush(timeout=15)
    assert not raised, f"reporting progress never raises into the caller; these did: {raised}"
    with JobStore(fault_db.url) as store:
        assert store.require_job("down").status is JobStatus.FAILED, "the queued error landed"


FAIL_ONCE = """
CREATE SEQUENCE fault_shots;
CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- nextval() is not rolled back with the failing transaction: this fires exactly once.
    IF NEW.summary = 'step 2' AND nextval('fault_shots') = 1 THEN
        RAISE EXCEPTION 'injected fault: the write of step 2 fails once';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_once BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION fail_once();
"""


def test_a_completion_never_overtakes_progress_whose_write_failed(
    fault_db: FaultDatabase,
) -> None:
    """Progress reported before the completion lands before it, even if its write failed once."""
    with JobStore(fault_db.url) as store:
        store.create_job(job_id="order")
    with opened_handler(fault_db.url, interval=60, sync_timeout=5) as handler:
        handler.apply(ProgressEvent(percent=10.0, message="step 1"), "order")
        handler.flush()  # the 60 s window starts: step 2 stays pending until the completion
        engine = sa.create_engine(fault_db.url, poolclass=NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql(FAIL_ONCE)
        handler.apply(ProgressEvent(percent=20.0, message="step 2"), "order")
        completed = handler.handle_job_completion("order", True, "done")
        handler.flush(timeout=10)
        write_errors = handler.stats.write_errors
    with engine.connect() as conn:
        shots = conn.exec_driver_sql("SELECT last_value FROM fault_shots").scalar()
    engine.dispose()

    assert shots is not None and shots >= 1 and write_errors >= 1, "the fault fired once"
    assert completed is True
    with JobStore(fault_db.url) as store:
        job = store.require_job("order")
        history = [(e.kind, e.message, e.percentage) for e in store.history("order")]
    assert history == [
        ("progress", "step 1", 10.0),
        ("progress", "step 2", 20.0),
        ("completion", "done", 100.0),
    ], "step 2 was reported before the completion, so it is written before it, not dropped"
    assert job.ignored_count == 0, "no progress reported before the completion counts as late"
