"""``RemoteJob``, the Python client of a remote worker, against a real ``morag-jobs serve``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from api_helpers import served

from morag_jobs.api.auth import ApiKeys
from morag_jobs.client import RemoteJob, RemoteJobError
from morag_jobs.errors import InvalidProgress
from morag_jobs.store import JobStore


@pytest.fixture
def server(database_url: str) -> Iterator[tuple[str, JobStore, str, str]]:
    """(base URL, store, admin key, worker key of gpu-01) of a served API."""
    with JobStore(database_url, create_tables=True) as store:
        keys = ApiKeys(store)
        admin, worker = keys.create("admin")[1], keys.create("worker", "gpu-01")[1]
        with served(database_url) as (base, _):
            yield base, store, admin, worker


def new_job(base: str, admin: str, **body: object) -> str:
    answer = httpx.post(f"{base}/api/v1/jobs", json={"worker_id": "gpu-01", **body},
                        headers={"Authorization": f"Bearer {admin}"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_a_worker_reports_a_thousand_times_in_a_few_requests_and_completes(
    server: tuple[str, JobStore, str, str],
) -> None:
    base, store, admin, worker = server
    job_id = new_job(base, admin, stages={"download": [0, 10], "processing": [10, 100]})
    with RemoteJob(base, worker, job_id, interval=0.2) as job:
        for i in range(1, 1001):
            job.progress(i / 10, f"chunk {i}", stage="processing", current=i, total=1000)
        job.flush()
        sent = job.sent
        ended = job.complete(True, "transcribed", result={"words": 1234})
    assert 1 <= sent < 100, f"coalesced: {sent} requests for 1000 reports"
    assert ended["status"] == "FINISHED" and ended["metadata"]["result"] == {"words": 1234}
    history = [e for e in store.history(job_id) if e.kind == "progress"]
    assert history[-1].current == 1000 and history[-1].percentage == 100.0, (
        "the last report was sent, not lost to coalescing")
    assert [e.percentage for e in history] == sorted(e.percentage for e in history)


def test_the_last_report_is_sent_by_a_timer_when_the_worker_goes_quiet(
    server: tuple[str, JobStore, str, str],
) -> None:
    base, store, admin, worker = server
    job_id = new_job(base, admin)
    job = RemoteJob(base, worker, job_id, interval=0.3)
    job.progress(10.0, "first")  # sent now
    job.progress(42.0, "second")  # due later: a timer sends it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and job.sent < 2:
        time.sleep(0.05)
    job.close()
    assert job.sent == 2
    deadline = time.monotonic() + 5  # the server coalesces its writes too
    while store.require_job(job_id).percentage != 42.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.require_job(job_id).summary == "second"


def test_a_refusal_raises_with_the_servers_message(
    server: tuple[str, JobStore, str, str],
) -> None:
    base, store, admin, worker = server
    not_ours = new_job(base, admin, worker_id="gpu-02")
    with pytest.raises(RemoteJobError) as refused:
        RemoteJob(base, worker, not_ours, interval=0).progress(5.0)
    assert refused.value.status == 404 and "gpu-01" in refused.value.detail
    with pytest.raises(RemoteJobError, match="401"):
        RemoteJob(base, "mjk_0123456789ab_wrong", not_ours, interval=0).progress(5.0)
    with pytest.raises(InvalidProgress):
        RemoteJob(base, worker, not_ours).progress(float("nan"))
    assert store.require_job(not_ours).percentage == 0.0


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) twice, then 202: a server restarting."""

    answers: list[int] = []
    bodies: list[dict[str, object]] = []

    def do_PUT(self) -> None:
        length = int(self.headers["content-length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        status = 503 if len(type(self).bodies) <= 2 else 202
        type(self).answers.append(status)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if status == 503:
            self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(b'{"detail": "restarting"}' if status == 503 else b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_unavailable_is_retried_with_the_same_report() -> None:
    _Flaky.answers, _Flaky.bodies = [], []
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        job = RemoteJob(f"http://127.0.0.1:{stub.server_port}", "k", "j1", interval=0)
        job.progress(30.0, "x")
        job.close()
    finally:
        stub.shutdown()
    assert _Flaky.answers == [503, 503, 202]
    assert len({body["sequence"] for body in _Flaky.bodies}) == 1, "one report, resent as is"
    down = RemoteJob("http://127.0.0.1:9", "k", "j1", interval=0, retries=2, max_backoff=0.01)
    with pytest.raises(RemoteJobError, match="gave up after 2 retries: ConnectError"):
        down.progress(1.0)
