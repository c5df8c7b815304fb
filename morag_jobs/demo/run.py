"""``morag-jobs demo``: every source of progress, live, with nothing but this package.

It starts a real Celery worker (a separate prefork process) on the embedded default
(kombu's filesystem broker, a SQLite job table in a temporary directory), serves the
HTTP API in this process, submits one job per source (callbacks with a stage plan,
log lines only, a subprocess's tqdm bar, a remote worker reporting over HTTP), draws
their progress bars until they end, prints the job table and stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated

import httpx
import typer
import uvicorn
from celery import Celery
from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task, TaskID, TextColumn

from morag_jobs.cli._common import fail
from morag_jobs.cli.jobs import ProgressCells, jobs_table
from morag_jobs.events import utc_now
from morag_jobs.logs import get_logger
from morag_jobs.store import Job, JobStore

DEADLINE = 55.0
STOP_TIMEOUT = 15.0  # seconds for the worker's warm shutdown before it is killed
log = get_logger(__name__)


def demo(
    broker: Annotated[str | None, typer.Option(
        help="Broker URL (e.g. redis://127.0.0.1:6379/0) instead of the embedded one.")] = None,
    database: Annotated[str | None, typer.Option(
        help="Job database URL (e.g. postgresql+psycopg://...) instead of a SQLite file.")
    ] = None,
    seconds: Annotated[float, typer.Option(min=1.0, max=40.0,
                                           help="How long each demo job runs.")] = 8.0,
    keep: Annotated[Path | None, typer.Option(
        help="Keep the demo's files (broker folder, SQLite job table) in this directory.")
    ] = None,
) -> None:
    """Run a real worker and watch four jobs move, one per source of progress."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped (CI, a log file): keep rows whole
    directory = Path(keep or tempfile.mkdtemp(prefix="morag-demo-")).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    database = database or f"sqlite:///{directory / 'jobs.db'}"
    os.environ.update(MORAG_DEMO_DIR=str(directory), MORAG_DATABASE_URL=database)
    if broker:
        os.environ["MORAG_DEMO_BROKER"] = broker
    try:
        _run(console, directory, database, seconds)
    finally:
        if keep is None:
            shutil.rmtree(directory, ignore_errors=True)


def _run(console: Console, directory: Path, database: str, seconds: float) -> None:
    # Imported here: the demo app is configured from the environment set just above.
    from morag_jobs.api.auth import ApiKeys  # noqa: PLC0415
    from morag_jobs.celery import submit  # noqa: PLC0415
    from morag_jobs.demo import tasks  # noqa: PLC0415

    store = JobStore(database, create_tables=True)
    store.upgrade()
    console.print(f"[bold]morag-jobs demo[/] · job table {store.url} · broker "
                  f"{tasks.app.conf.broker_url}")
    with _worker(directory, tasks.app) as worker, _api(store) as base_url:
        _, key = ApiKeys(store).create("worker", "gpu-01", label="demo remote worker")
        remote = store.create_job(name="remote GPU transcription", job_type="remote",
                                  worker_id="gpu-01")
        jobs = [
            submit(tasks.transcribe, (seconds,), name="callbacks + stage plan",
                   job_type="audio"),
            submit(tasks.ingest_logs, (seconds,), name="log lines only"),
            submit(tasks.convert, (seconds,), name="subprocess with a tqdm bar"),
            remote,
        ]
        reporter = threading.Thread(target=_remote_worker,
                                    args=(base_url, key, remote.id, seconds), daemon=True)
        reporter.start()
        finished = _watch(console, store, [job.id for job in jobs])
        worker.request_stop()  # it stops while the API server does
        reporter.join(5)
        if not finished:
            tail = worker.log_path.read_text(errors="replace")[-2000:]
            console.print(f"[red]jobs did not finish in {DEADLINE:.0f} s; worker log:[/]\n{tail}")
    console.print(jobs_table(store.list_jobs(limit=10)))
    store.close()
    if not finished:
        fail("demo did not finish in time")
    console.print("[green]all jobs ended[/]; the worker and the API server are stopped.")


def _remote_worker(base_url: str, key: str, job_id: str, seconds: float) -> None:
    """A 'remote worker': reports over HTTP, as a GPU box outside the cluster would."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        steps = 20
        for step in range(1, steps + 1):
            client.put(f"/api/v1/remote-jobs/{job_id}/progress",
                       json={"percentage": step * 100 / steps, "sequence": step,
                             "timestamp": utc_now().isoformat(),
                             "message": f"GPU transcribing chunk {step} of {steps}"},
                       ).raise_for_status()
            time.sleep(seconds / steps)
        client.post(f"/api/v1/remote-jobs/{job_id}/complete",
                    json={"success": True, "message": "remote transcription done"},
                    ).raise_for_status()


def _watch(console: Console, store: JobStore, job_ids: list[str]) -> bool:
    """Draw one bar per job until all have ended; False on the deadline."""
    progress = Progress(TextColumn("{task.description:<32}"), _Cells(),
                        TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[note]}"),
                        console=console)
    bars: dict[str, TaskID] = {}
    deadline = time.monotonic() + DEADLINE
    with progress:
        while time.monotonic() < deadline:
            jobs = [store.require_job(job_id) for job_id in job_ids]
            for job in jobs:
                note = _note(job)
                if job.id not in bars:
                    bars[job.id] = progress.add_task(job.name or job.id, total=100, note=note)
                progress.update(bars[job.id], completed=job.percentage, note=note)
            if all(job.status.is_terminal for job in jobs):
                return True
            time.sleep(0.1)
    return False


class _Cells(ProgressColumn):
    """The bar ``morag-jobs status`` draws: empty cells unlike full ones without colour."""

    def render(self, task: Task) -> ProgressCells:
        return ProgressCells(task.percentage)


def _note(job: Job) -> str:
    stage = f"[{job.stage}] " if job.stage else ""
    return f"{job.status.value:<10} {stage}{(job.summary or '')[:48]}"


class _Worker:
    """The demo's `celery worker` process (prefork), in a session of its own."""

    def __init__(self, directory: Path, app: Celery) -> None:
        self.app = app
        self.log_path = directory / "worker.log"
        self.node = f"morag-demo-{os.getpid()}@{socket.gethostname()}"
        self._stopping = False
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "morag_jobs.demo.tasks", "worker",
                 "--pool", "prefork", "--concurrency", "3", "--loglevel", "INFO",
                 "--hostname", self.node, "--without-mingle", "--without-gossip",
                 "--without-heartbeat", "--morag-reap-timeout", "0"],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def request_stop(self) -> None:
        """Ask for a warm shutdown, as ``celery multi stop`` does: SIGTERM to the main
        process only, and return at once.

        Never to the process group: a pool child killed by a signal can die holding the
        pool's queue lock, and the main process then waits on it for ever in
        ``Pool.close``. A worker on a polling transport (the embedded broker) looks at
        its stop flag only between two-second drains, and drains once more after it, so
        the same request also goes as a broker message, which ends the drain at once.
        """
        if self._stopping:
            return
        self._stopping = True
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.app.control.shutdown(destination=[self.node])
        except Exception:  # the signal alone still stops it, a few seconds later
            log.warning("could not send the demo worker a shutdown message", exc_info=True)

    def stop(self) -> None:
        """Stop the worker and reap it; killed (the whole group) if it does not stop."""
        self.request_stop()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("the demo worker did not stop in time; killing it",
                        pid=self.process.pid)
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


@contextmanager
def _worker(directory: Path, app: Celery) -> Iterator[_Worker]:
    """A real worker for the ``with`` block, stopped and reaped on the way out."""
    worker = _Worker(directory, app)
    try:
        yield worker
    finally:
        worker.stop()


@contextmanager
def _api(store: JobStore) -> Iterator[str]:
    """The HTTP API on a free loopback port, in a thread of this process."""
    from morag_jobs.api.app import create_app  # noqa: PLC0415 - FastAPI only when needed

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store=store), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
