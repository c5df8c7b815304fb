"""The job commands (status, list, history, cancel, reap, db upgrade) via the real entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from morag_jobs import JobStatus, JobStore, StagePlan
from morag_jobs.compat import ProgressHandler
from morag_jobs.events import utc_now


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "morag_jobs", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    store = JobStore(database_url, create_tables=True)
    store.count_jobs()  # the store migrates on first use: make that now
    yield store
    store.close()


def _running_job(store: JobStore) -> str:
    job = store.create_job(name="talk.mp3", job_type="audio", user_id="u1",
                           stages=StagePlan({"download": (0, 10), "processing": (10, 70),
                                             "indexing": (70, 100)}))
    handler = ProgressHandler(store=store, interval=0)
    handler.process_log_line("Stage: processing (25%)", job_id=job.id)
    handler.flush()  # two writes, two history rows
    handler.process_log_line("Processing file 450 of 1000", job_id=job.id)
    handler.flush()
    handler.close()
    return job.id


def test_status_shows_the_seed_002_display(store: JobStore, database_url: str) -> None:
    job_id = _running_job(store)
    result = run("status", job_id, "--database", database_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (f"Job       {job_id}", "Status    PROCESSING", "Stage     processing",
                     "(450/1000)", "Message   Processing file 450 of 1000"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert re.search(r"Updated   \d+ seconds? ago", out), f"no 'updated N seconds ago' in:\n{out}"


def test_status_json_is_the_job_for_scripts(store: JobStore, database_url: str) -> None:
    job_id = _running_job(store)
    result = run("status", job_id, "--json", "--database", database_url)
    data = json.loads(result.stdout)
    assert (data["id"], data["status"], data["stage"]) == (job_id, "PROCESSING", "processing")
    assert data["current"] == 450 and data["total"] == 1000
    assert "eta_seconds" in data


def test_status_watch_redraws_until_the_job_ends_and_exits_by_outcome(
    store: JobStore, database_url: str
) -> None:
    job_id = _running_job(store)
    handler = ProgressHandler(store=store)
    handler.handle_job_completion(job_id, False, "ValueError: bad input")
    handler.close()
    result = run("status", job_id, "--watch", "--interval", "0.2", "--json",
                 "--database", database_url)
    assert result.returncode == 1, "a FAILED job makes --watch exit 1"
    assert json.loads(result.stdout.splitlines()[-1])["status"] == "FAILED"


def test_unknown_job_is_one_line_on_stderr_and_exit_1(database_url: str, store: JobStore) -> None:
    result = run("status", "no-such-job", "--database", database_url)
    assert result.returncode == 1
    assert result.stderr.strip() == "morag-jobs: no job with id 'no-such-job'", result.stderr


def test_unreachable_database_masks_the_password() -> None:
    result = run("list", "--database",
                 "postgresql+psycopg://jobs:hunter2@127.0.0.1:1/jobs")
    assert result.returncode == 1
    assert "hunter2" not in result.stderr
    assert result.stderr.startswith("morag-jobs: job database postgresql+psycopg://jobs:***@")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_arguments_exit_2(database_url: str) -> None:
    assert run("list", "--status", "DONE", "--database", database_url).returncode == 2
    assert run("status").returncode == 2


def test_list_filters_and_json(store: JobStore, database_url: str) -> None:
    running = _running_job(store)
    store.create_job(name="other", job_type="video", user_id="u2")
    result = run("list", "--status", "processing", "--json", "--database", database_url)
    assert [job["id"] for job in json.loads(result.stdout)] == [running]
    table = run("list", "--type", "video", "--database", database_url)
    assert "other" not in table.stdout or "PENDING" in table.stdout
    assert running not in table.stdout


def test_history_lists_every_write_oldest_first(store: JobStore, database_url: str) -> None:
    job_id = _running_job(store)
    result = run("history", job_id, "--json", "--database", database_url)
    events = json.loads(result.stdout)
    assert [e["kind"] for e in events] == ["progress", "progress"]
    assert events[0]["percentage"] == 25.0 and events[1]["current"] == 450


def test_cancel_marks_the_job_cancelled_once(store: JobStore, database_url: str) -> None:
    job_id = _running_job(store)
    first = run("cancel", job_id, "--database", database_url)
    assert first.returncode == 0, first.stderr
    assert store.require_job(job_id).status is JobStatus.CANCELLED
    again = run("cancel", job_id, "--database", database_url)
    assert again.returncode == 1 and "already ended (CANCELLED)" in again.stderr


PROJECT_APP = """
from pathlib import Path

from celery import Celery

BROKER = Path(__file__).resolve().parent.parent / "broker"
app = Celery("proj", broker="filesystem://")
app.conf.broker_transport_options = {
    "data_folder_in": str(BROKER / "queue"), "data_folder_out": str(BROKER / "queue"),
    "processed_folder": str(BROKER / "processed"), "control_folder": str(BROKER / "control"),
}
"""


def _project(root: Path) -> dict[str, str]:
    """A Celery project as `celery -A proj.celery:app` expects it: the package in the cwd."""
    (root / "proj").mkdir()
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "celery.py").write_text(PROJECT_APP)
    folders = {name: root / "broker" / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    return {"data_folder_in": str(folders["queue"]), "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"])}


def test_cancel_finds_the_app_in_the_current_directory_as_celery_does(
    store: JobStore, database_url: str, tmp_path: Path
) -> None:
    from kombu import Connection, Exchange, Queue  # noqa: PLC0415 - the [celery] extra

    options = _project(tmp_path)
    job = store.create_job(name="long", metadata={"task_id": "task-to-revoke"})
    # The installed command, not `python -m` (which puts the cwd on sys.path by itself).
    command = Path(sys.executable).parent / "morag-jobs"
    assert command.exists(), f"{command} is not installed"
    with Connection("filesystem://", transport_options=options) as connection:
        # What a worker's remote-control queue would receive (workers bind it at start). Its
        # own name: kombu remembers bindings per process, and would not write this one again.
        probe = Queue(f"probe-{tmp_path.name}.celery.pidbox",
                      Exchange("celery.pidbox", type="fanout"),
                      auto_delete=False)(connection.default_channel)
        probe.declare()
        result = subprocess.run([str(command), "cancel", job.id, "--app", "proj.celery:app",
                                 "--database", database_url], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{job.id} CANCELLED (task task-to-revoke revoked)"
        message = probe.get(no_ack=True)
    assert message is not None, "no revoke reached the broker"
    assert message.payload["method"] == "revoke"
    assert message.payload["arguments"]["task_id"] == "task-to-revoke"
    assert store.require_job(job.id).status is JobStatus.CANCELLED


def test_cancel_with_an_app_that_does_not_load_is_one_line_and_exit_2(
    store: JobStore, database_url: str, tmp_path: Path
) -> None:
    job = store.create_job(name="long", metadata={"task_id": "t-1"})
    result = subprocess.run([sys.executable, "-m", "morag_jobs", "cancel", job.id,
                             "--app", "no_such_project.celery:app", "--database", database_url],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("morag-jobs: cannot load Celery app 'no_such_project")
    assert len(result.stderr.strip().splitlines()) == 1
    assert store.require_job(job.id).status is not JobStatus.CANCELLED


def test_reap_fails_running_jobs_without_heartbeat(store: JobStore, database_url: str) -> None:
    job_id = _running_job(store)
    old = utc_now() - timedelta(minutes=10)
    store.update_job(job_id, lambda job: ({"heartbeat_at": old, "last_progress_at": old,
                                           "claim": "celery"}, None))  # a Celery worker's
    result = run("reap", "--timeout", "60", "--database", database_url)
    assert result.returncode == 0, result.stderr
    job = store.require_job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.startswith("worker lost")
    assert job.percentage == pytest.approx(37.0), "FAILED keeps the percentage reached"


def test_a_database_without_the_job_table_says_to_upgrade(postgres_url: str) -> None:
    url = postgres_url + "?options=-csearch_path%3Dnothing_here"
    result = run("list", "--database", url)
    assert result.returncode == 1
    assert "run `morag-jobs db upgrade`" in result.stderr, result.stderr


def test_db_upgrade_is_idempotent(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    for _ in range(2):
        result = run("db", "upgrade", "--database", url)
        assert result.returncode == 0, result.stderr
    assert JobStore(url).count_jobs() == 0
