"""``morag-jobs keys`` and ``morag-jobs serve``, run as real processes."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from datetime import UTC, datetime

import httpx
from api_helpers import REPO, body, served

from morag_jobs.api import ApiKeys
from morag_jobs.cli.serve import _log_config
from morag_jobs.store import JobStatus, JobStore
from tests.services import fresh_postgres_schema


def morag_jobs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "morag_jobs", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_keys_create_prints_the_key_alone_on_the_last_line(database_url: str) -> None:
    with JobStore(database_url) as fresh:
        fresh.upgrade()
    result = morag_jobs("keys", "create", "--admin", "--label", "ci", "--database",
                        database_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    key = lines[-1]
    assert key.startswith("mjk_") and " " not in key, f"the last line is the key: {lines}"
    assert lines == [key], "alone on stdout: KEY=$(morag-jobs keys create ...) just works"
    assert "store it now" in result.stderr
    with JobStore(database_url) as store:
        _check_listed_and_revoked(store, database_url, key)


def _check_listed_and_revoked(store: JobStore, database_url: str, key: str) -> None:
    key_id = key.split("_")[1]
    keys = ApiKeys(store)
    assert keys.check(key) is not None, "the printed key authenticates"
    record = keys.get(key_id)
    assert record is not None and (record.scope, record.label) == ("admin", "ci")
    listed = morag_jobs("keys", "list", "--database", database_url)
    assert key_id in listed.stdout and key not in listed.stdout, "list never shows secrets"
    revoked = morag_jobs("keys", "revoke", key_id, "--database", database_url)
    assert revoked.returncode == 0 and f"revoked key {key_id}" in revoked.stdout
    assert ApiKeys(store).check(key) is None, "a revoked key no longer authenticates"
    assert "T" in morag_jobs("keys", "list", "--database", database_url).stdout.split(
        key_id)[1].splitlines()[0].split("\t")[-1], "list shows when it was revoked"


def test_keys_commands_refuse_bad_arguments(sqlite_url: str) -> None:
    for args in (["create"], ["create", "--admin", "--worker", "w"]):
        result = morag_jobs("keys", *args, "--database", sqlite_url)
        assert result.returncode == 2, f"{args}: exactly one scope is required"
        assert "exactly one of --worker W, --user U or --admin" in result.stderr
    missing = morag_jobs("keys", "revoke", "nope", "--database", sqlite_url)
    assert missing.returncode == 1 and "no key with id 'nope'" in missing.stderr


def test_keys_on_an_unmigrated_postgres_database_say_how_to_fix_it(postgres_url: str) -> None:

    empty = fresh_postgres_schema(postgres_url)
    result = morag_jobs("keys", "create", "--worker", "w1", "--database", empty)
    assert result.returncode == 1 and "morag-jobs db upgrade" in result.stderr, result.stderr


def test_serve_answers_over_real_http_and_flushes_on_shutdown(database_url: str) -> None:
    store = JobStore(database_url, create_tables=True)
    job = store.create_job(name="remote.wav", worker_id="gpu-01", user_id="alice")
    worker = ApiKeys(store).create("worker", "gpu-01")[1]
    alice = ApiKeys(store).create("user", "alice")[1]
    with served(database_url) as (base, process):
        report = body(percentage=64, message="transcribing",
                      sequence=1) | {"timestamp": datetime.now(UTC).isoformat()}
        put = httpx.put(f"{base}/api/v1/remote-jobs/{job.id}/progress", json=report,
                        headers={"Authorization": f"Bearer {worker}"})
        assert put.status_code == 202, put.text
        too_big = httpx.put(f"{base}/api/v1/remote-jobs/{job.id}/progress",
                            content=b"{" + b" " * 70_000 + b"}",
                            headers={"Authorization": f"Bearer {worker}",
                                     "Content-Type": "application/json"})
        assert too_big.status_code == 413, "the size limit holds on a real server"
        anonymous = httpx.get(f"{base}/api/v1/jobs/{job.id}")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"]
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        assert "morag_jobs_updates_total" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "morag-jobs"
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(20) in (0, -signal.SIGTERM), "a clean shutdown on SIGTERM"
    written = store.require_job(job.id)
    assert (written.percentage, written.status) == (64.0, JobStatus.PROCESSING), (
        "the queued report was written by the time the server exited")
    with served(database_url) as (base, _):
        seen = httpx.get(f"{base}/api/v1/jobs/{job.id}",
                         headers={"Authorization": f"Bearer {alice}"})
        assert seen.status_code == 200 and seen.json()["summary"] == "transcribing"
    store.close()


def test_serve_masks_access_tokens_in_its_access_log() -> None:
    config = _log_config()
    redact = config["filters"]["redact_tokens"]["()"]()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "GET",
                               "/api/v1/stream?access_token=mjk_ab_secret&x=1", "1.1", 200),
                               None)
    assert redact.filter(record) and record.getMessage() == (
        '127.0.0.1:5 - "GET /api/v1/stream?access_token=***&x=1 HTTP/1.1" 200'), (
        "the key never reaches the log")
    assert "redact_tokens" in config["handlers"]["access"]["filters"]
    for spelled in ("%61ccess_token", "access%5Ftoken", "ACCESS_TOKEN", "access%255Ftoken"):
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", (
            f"/api/v1/stream?x=1&{spelled}=mjk_ab_secret",), None)
        assert redact.filter(record) and "mjk_ab_secret" not in record.getMessage(), (
            f"{spelled}: a name that decodes to access_token is masked too")
