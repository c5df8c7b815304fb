"""``RemoteJob``: a remote worker's side of the HTTP API, for Python workers.

A GPU box outside the cluster reports on the job it was given (``morag-jobs create
--worker W`` or ``POST /api/v1/jobs``) with its worker key::

    from morag_jobs.client import RemoteJob

    with RemoteJob("https://jobs.example.com", key, job_id) as job:
        for i, chunk in enumerate(chunks):
            transcribe(chunk)
            job.progress(100 * (i + 1) / len(chunks), f"chunk {i + 1}", stage="processing")
        job.complete(True, "transcribed", result={"words": 1234})

``progress`` never blocks the work for long: reports are coalesced (the latest wins,
sent at most once per ``interval``, the last one by a timer so it is never lost), each
carries an increasing ``sequence`` so a retried or late request cannot move the job
back, and sending is retried with exponential backoff and jitter on connection errors,
429 and 5xx (``Retry-After`` honoured). A refusal that retrying cannot fix (a bad key,
a job that is not the worker's, a job that ended) raises ``RemoteJobError`` with the
server's message, from ``progress``, ``flush`` or ``complete``.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx

from morag_jobs.errors import MoragJobsError
from morag_jobs.events import check_percent
from morag_jobs.logs import get_logger

__all__ = ["RemoteJob", "RemoteJobError"]

log = get_logger(__name__)

_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class RemoteJobError(MoragJobsError):
    """The server refused a report or a completion for a reason retrying cannot fix."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class RemoteJob:
    """Reports progress and completion of one job to a morag-jobs server."""

    def __init__(
        self, base_url: str, key: str, job_id: str, *, interval: float = 1.0,
        retries: int = 6, timeout: float = 10.0, max_backoff: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"interval must be seconds >= 0, got {interval}")
        self.job_id = job_id
        self.interval = interval
        self.retries = retries
        self.max_backoff = max_backoff
        self._owns_client = client is None
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self._headers = {"Authorization": f"Bearer {key}"}
        self._path = f"/api/v1/remote-jobs/{job_id}"
        self._lock = threading.Lock()  # one request at a time, in order
        self._state = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._sequence = time.time_ns() // 1000  # above any earlier run's for this job
        self._last_sent = float("-inf")
        self._timer: threading.Timer | None = None
        self._error: RemoteJobError | None = None
        self.sent = 0
        """Reports the server accepted."""

    # -- reporting -------------------------------------------------------------------------

    def progress(
        self, percentage: float, message: str = "", *, stage: str | None = None,
        current: int | None = None, total: int | None = None,
    ) -> None:
        """Report progress (0-100, of ``stage`` when given); sent now or within ``interval``.

        Raises ``InvalidProgress`` for NaN, infinity, negatives or above 100, and
        ``RemoteJobError`` when an earlier report was refused for good.
        """
        self._raise_refusal()
        report: dict[str, Any] = {
            "percentage": check_percent(percentage, over_100=False), "message": message,
            "timestamp": datetime.now(UTC).isoformat(),
        }
        for name, value in (("stage", stage), ("current", current), ("total", total)):
            if value is not None:
                report[name] = value
        with self._state:
            self._sequence += 1
            report["sequence"] = self._sequence
            self._pending = report
            due = self._last_sent + self.interval - time.monotonic()
            if due > 0:
                if self._timer is None:
                    self._timer = threading.Timer(due, self._send_pending_quietly)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self.flush()

    def flush(self) -> None:
        """Send the pending report now (if any); raises ``RemoteJobError`` if refused."""
        with self._lock:
            with self._state:
                report, self._pending = self._pending, None
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if report is not None:
                self._send("PUT", "/progress", report)
                self._last_sent = time.monotonic()
                self.sent += 1
        self._raise_refusal()

    def complete(
        self, success: bool = True, message: str = "", *, result: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send what is pending, then end the job (FINISHED, or FAILED with ``message``);
        the job as the server wrote it."""
        self.flush()
        body: dict[str, Any] = {"success": success, "message": message}
        if result is not None:
            body["result"] = result
        with self._lock:
            answer = self._send("POST", "/complete", body)
        return answer.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Send what is pending (a refusal is logged, not raised) and close the client."""
        try:
            self.flush()
        except RemoteJobError as error:
            log.warning("last report refused", job_id=self.job_id, error=str(error))
        finally:
            if self._owns_client:
                self._client.close()

    def __enter__(self) -> RemoteJob:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------------

    def _send_pending_quietly(self) -> None:
        try:
            self.flush()
        except RemoteJobError:
            pass  # kept in _error: raised by the next call the worker makes
        except Exception:  # a timer thread must not die loudly; the next call retries
            log.exception("could not send a pending report", job_id=self.job_id)

    def _send(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        attempt = 0
        while True:
            wait: float | None
            try:
                answer = self._client.request(method, self._path + path, json=body,
                                              headers=self._headers)
            except httpx.TransportError as error:
                wait, reason = self._backoff(attempt), f"{type(error).__name__}: {error}"
            else:
                if answer.status_code < 400:
                    return answer
                detail = _detail(answer)
                if answer.status_code not in _RETRYABLE_STATUS:
                    refusal = RemoteJobError(answer.status_code, detail)
                    self._error = refusal
                    raise refusal
                wait = _retry_after(answer) or self._backoff(attempt)
                reason = f"{answer.status_code}: {detail}"
            attempt += 1
            if attempt > self.retries:
                raise RemoteJobError(0, f"gave up after {self.retries} retries: {reason}")
            log.warning("report not delivered; retrying", job_id=self.job_id, attempt=attempt,
                        wait=round(wait, 2), reason=reason)
            time.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: a random wait up to 0.25 s x 2^attempt, at most ``max_backoff``."""
        return random.uniform(0, min(self.max_backoff, 0.25 * 2 ** min(attempt, 16)))

    def _raise_refusal(self) -> None:
        if self._error is not None:
            raise self._error


def _detail(answer: httpx.Response) -> str:
    try:
        detail = answer.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else answer.text[:200] or answer.reason_phrase


def _retry_after(answer: httpx.Response) -> float | None:
    raw = answer.headers.get("retry-after", "")
    try:
        return min(max(float(raw), 0.0), 300.0)
    except ValueError:
        return None
