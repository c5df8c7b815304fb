"""Helpers shared by the HTTP API tests: an app on a real database, keys, request bodies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from morag_jobs.api import ApiKeys, create_app
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import Job, JobStore

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def body(percentage: Any = 50.0, message: Any = "working", *, at: int = 0,
         **extra: Any) -> dict[str, Any]:
    """A progress body; ``at`` seconds after T0 as its timestamp."""
    return {"percentage": percentage, "message": message,
            "timestamp": (T0 + timedelta(seconds=at)).isoformat(), **extra}


@dataclass
class Api:
    """An app on a real database with its TestClient, store and handler."""

    app: FastAPI
    client: TestClient
    store: JobStore
    keys: ApiKeys
    created: list[str] = field(default_factory=list)

    @property
    def handler(self) -> ProgressHandler:
        return self.app.state.morag.handler  # type: ignore[no-any-return]

    def key(self, scope: str, subject: str | None = None) -> str:
        return self.keys.create(scope, subject)[1]  # type: ignore[arg-type]

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def job(self, **fields: Any) -> Job:
        return self.store.create_job(**fields)

    def progress(self, job_id: str, key: str, payload: Any = None, *, wait: bool = False,
                 **body_fields: Any) -> httpx.Response:
        url = f"/api/v1/remote-jobs/{job_id}/progress" + ("?wait=true" if wait else "")
        return self.client.put(url, json=payload if payload is not None else body(**body_fields),
                               headers=self.auth(key))

    def complete(self, job_id: str, key: str, **payload: Any) -> httpx.Response:
        return self.client.post(f"/api/v1/remote-jobs/{job_id}/complete", json=payload,
                                headers=self.auth(key))

    def get(self, path: str, key: str | None, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params, headers=self.auth(key) if key else {})

    def settled(self, job_id: str) -> Job:
        """The job after the handler's coalesced writes have landed."""
        self.handler.flush()
        return self.store.require_job(job_id)


@contextmanager
def running_api(url: str, **options: Any) -> Iterator[Api]:
    """``create_app`` on ``url`` (migrated), inside its lifespan."""
    store = JobStore(url, create_tables=True)
    options.setdefault("stream_poll_interval", 0.05)
    app = create_app(store, **options)
    try:
        with TestClient(app) as client:
            yield Api(app, client, store, app.state.morag.keys)
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(url: str, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``morag-jobs serve`` as a real process on a free localhost port: (base URL, process)."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "morag_jobs", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--database", url, *extra],
            cwd=REPO, env={**os.environ, "MORAG_LOG_LEVEL": "WARNING"}, stdout=log, stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base, process, log)
            yield base, process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_healthy(base: str, process: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"morag-jobs serve exited with {process.returncode}: "
                                 f"{log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("morag-jobs serve did not answer /healthz within 30 s")
        time.sleep(0.1)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from Server-Sent Event lines; comments come as ("comment", text)."""
    event, data = "message", []
    for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free loopback port: its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none",
                            lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
