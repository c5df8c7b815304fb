"""The dashboard (``GET /``): served safely, and live in a real browser.

The browser tests drive Debian's Chromium (``/usr/bin/chromium``, never a downloaded
one) with Playwright against the real server (uvicorn in a thread): progress reported
through ``PUT /api/v1/remote-jobs/{id}/progress`` moves the job's bar without a reload,
the job count follows jobs arriving live, the list loads a page at a time, and the
job's detail view shows its history as a chart and as a timeline grouped by stage.
The phone layout (cards at 390 px) is tested in ``test_dashboard_mobile.py``; cancelling
a job and parent jobs shown as a tree in ``test_dashboard_control.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import serving
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright

from morag_jobs.api import dashboard
from morag_jobs.api.app import create_app
from morag_jobs.api.auth import ApiKeys
from morag_jobs.stages import StagePlan
from morag_jobs.store import JobStatus, JobStore
from tests.services import service_missing

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path("/tmp/dashboard.png")
WAIT_MS = 10_000


def dashboard_app(store: JobStore, stream_poll_interval: float = 0.1) -> FastAPI:
    """The API with the dashboard; fast stream polling so the test does not wait."""
    app = create_app(store=store, stream_poll_interval=stream_poll_interval,
                     write_interval=0.05, heartbeat_interval=2.0)
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        app.include_router(dashboard.router)  # until create_app includes it itself
    return app


@pytest.fixture
def store(sqlite_url: str) -> Iterator[JobStore]:
    with JobStore(sqlite_url, create_tables=True) as job_store:
        yield job_store


# -- the page as HTTP ---------------------------------------------------------------------


def test_page_and_assets_are_served_with_a_strict_content_security_policy(
    store: JobStore,
) -> None:
    with TestClient(dashboard_app(store)) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["referrer-policy"] == "no-referrer"
        assert 'src="static/dashboard.js"' in page.text
        assert "http://" not in page.text and "https://" not in page.text, "no CDN"
        script = client.get("/static/dashboard.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "EventSource" in script.text and "innerHTML" not in script.text
        assert "style-src 'self'" in policy and "unsafe-inline" not in policy
        assert not re.search(r"setAttribute\(\s*[\"']style", script.text), \
            "inline style attributes are refused by the policy"
        assert client.get("/static/dashboard.css").status_code == 200
        again = client.get("/", headers={"if-none-match": page.headers["etag"]})
        assert again.status_code == 304
        missing = client.get("/static/../app.py")
        assert missing.status_code == 404
        assert client.get("/static/secrets.txt").status_code == 404
        paths = client.get("/openapi.json").json()["paths"]
        assert "/" not in paths and "/static/{name}" not in paths, "the page is not API"


# -- the page in a browser ----------------------------------------------------------------


def chromium_or_skip() -> None:
    if CHROMIUM.exists():
        return
    service_missing("Chromium", FileNotFoundError(
        f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`"))


@pytest.fixture
def server(store: JobStore) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port; yields its base URL."""
    with serving(dashboard_app(store)) as url:
        yield url




def report(client: httpx.Client, job_id: str, percentage: float, message: str,
           stage: str | None = None) -> None:
    body: dict[str, Any] = {"percentage": percentage, "message": message,
                            "timestamp": datetime.now(UTC).isoformat()}
    if stage is not None:
        body["stage"] = stage
    response = client.put(f"/api/v1/remote-jobs/{job_id}/progress?wait=true", json=body)
    assert response.status_code == 200, response.text


def admin_client(store: JobStore, server: str) -> tuple[str, httpx.Client]:
    _, admin = ApiKeys(store).create("admin", label="dashboard test")
    return admin, httpx.Client(base_url=server, headers={"Authorization": f"Bearer {admin}"},
                               timeout=10)


@contextmanager
def signed_in(server: str, key: str, width: int = 1280, height: int = 720,
              expected_errors: tuple[str, ...] = ()) -> Iterator[Any]:
    """A Chromium page on the dashboard, signed in with ``key`` and live; no page errors
    (but console errors containing one of ``expected_errors``: a refusal the test causes)."""
    chromium_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda m: m.type == "error" and not any(
                expected in m.text for expected in expected_errors) and problems.append(m.text))
            page.goto(server + "/")
            page.fill("#api-key", key)
            page.click("[data-testid=save-key]")
            page.wait_for_selector("[data-testid=connection][data-state=live]", timeout=WAIT_MS)
            yield page
            assert not problems, f"errors in the page: {problems}"
        finally:
            browser.close()


def wait_for_text(page: Any, selector: str, text: str) -> None:
    """Wait until ``selector``'s text is ``text``; the assertion says what it was."""
    try:
        page.wait_for_function(
            "([s, t]) => document.querySelector(s)?.textContent.trim() === t",
            arg=[selector, text], timeout=WAIT_MS,
        )
    except Exception:
        shown = page.evaluate("s => document.querySelector(s)?.textContent", selector)
        raise AssertionError(f"{selector} shows {shown!r}, not {text!r}") from None


def row_ids(page: Any) -> list[str]:
    return page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=job-row]')].map(r => r.dataset.jobId)"
    )


@pytest.mark.browser
def test_progress_moves_the_bar_live_and_the_detail_shows_the_timeline(
    store: JobStore, server: str
) -> None:
    chromium_or_skip()
    _, admin = ApiKeys(store).create("admin", label="dashboard test")
    job = store.create_job(name="keynote.mp4", job_type="video", user_id="ana")
    done = store.create_job(name="interview.mp3", job_type="audio", user_id="ben")
    store.update_job(done.id, lambda j: ({"status": "FINISHED", "percentage": 100.0,
                                          "summary": "transcript indexed"}, None))
    api = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {admin}"},
                       timeout=10)
    report(api, job.id, 5, "Downloading")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 560})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(server + "/")

            # A refused key is said so, and the key is asked for again.
            page.fill("#api-key", "mjk_nope_nope")
            page.click("[data-testid=save-key]")
            page.wait_for_selector("[data-testid=key-error]", state="visible", timeout=WAIT_MS)
            problems.clear()  # the browser logs the 401 itself

            page.fill("#api-key", admin)
            page.click("[data-testid=save-key]")
            bar = f'[data-job-id="{job.id}"] .bar'
            page.wait_for_selector(bar, timeout=WAIT_MS)
            page.wait_for_selector("[data-testid=connection][data-state=live]", timeout=WAIT_MS)
            assert page.evaluate("localStorage.getItem('morag-jobs.api-key')") == admin
            page.evaluate("window.notReloaded = true")
            assert page.inner_text(f'[data-job-id="{done.id}"] .pct') == "100.0%"

            report(api, job.id, 45, "Transcribing chunk 3 of 8", stage="transcription")
            wait_for_bar(page, job.id, "45%", "45.0%")
            row = f'[data-job-id="{job.id}"]'
            assert page.inner_text(f"{row} .message") == "Transcribing chunk 3 of 8"
            assert page.inner_text(f"{row} .status") == "PROCESSING"

            time.sleep(0.3)  # let the ETA see progress over time
            report(api, job.id, 60, "Transcribing chunk 5 of 8", stage="transcription")
            wait_for_bar(page, job.id, "60%", "60.0%")
            page.wait_for_function(
                "s => /^~\\d/.test(document.querySelector(s).textContent)",
                arg=f"{row} .eta", timeout=WAIT_MS,
            )
            assert page.inner_text(f'[data-job-id="{done.id}"] .eta') == "—"
            assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            page.click(f"{row} .message")
            page.wait_for_selector("[data-testid=job-detail]", state="visible", timeout=WAIT_MS)
            assert page.inner_text("[data-testid=detail-title]") == "keynote.mp4"
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=timeline-item]').length >= 3",
                timeout=WAIT_MS,
            )
            timeline = page.inner_text("[data-testid=timeline]")
            assert "Transcribing chunk 3 of 8" in timeline and "45.0%" in timeline

            report(api, job.id, 80, "Indexing transcript", stage="indexing")
            page.wait_for_function(
                "() => document.querySelector('[data-testid=detail-bar]').style.width === '80%'"
                " && document.querySelector('[data-testid=timeline-item]')"
                ".textContent.includes('Indexing transcript')",
                timeout=WAIT_MS,
            )
            assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
            page.screenshot(path=str(SCREENSHOT.with_name("dashboard-detail.png")),
                            full_page=True)
            assert not problems, f"errors in the page: {problems}"
        finally:
            browser.close()
            api.close()


def wait_for_bar(page: Any, job_id: str, width: str, text: str) -> None:
    page.wait_for_function(
        """([id, width, text]) => {
            const row = document.querySelector(`[data-job-id="${id}"]`);
            return row && row.querySelector('.bar').style.width === width
                && row.querySelector('.pct').textContent === text;
        }""",
        arg=[job_id, width, text], timeout=WAIT_MS,
    )
    assert re.fullmatch(r"\d+(\.\d)?%", text)


# -- the job count, live --------------------------------------------------------------


@pytest.mark.browser
def test_the_job_count_follows_jobs_that_arrive_enter_or_leave_live(
    store: JobStore, server: str
) -> None:
    admin, api = admin_client(store, server)
    store.create_job(name="first.mp4", job_type="video", user_id="ana")
    store.create_job(name="second.mp4", job_type="video", user_id="ana")
    with closing(api), signed_in(server, admin) as page:
        wait_for_text(page, "[data-testid=summary]", "2 jobs")

        arrived = store.create_job(name="arrived-live.mp4", job_type="video", user_id="ben")
        page.wait_for_selector(f'[data-job-id="{arrived.id}"]', timeout=WAIT_MS)
        wait_for_text(page, "[data-testid=summary]", "3 jobs")
        assert row_ids(page)[0] == arrived.id, "the newest job is listed first"

        # Under a status filter the count follows jobs entering and leaving that status.
        page.select_option("[data-testid=status-filter]", "PROCESSING")
        wait_for_text(page, "[data-testid=summary]", "0 processing jobs")
        report(api, arrived.id, 10, "Downloading")
        wait_for_text(page, "[data-testid=summary]", "1 processing job")
        assert row_ids(page) == [arrived.id]
        store.update_job(arrived.id, lambda j: ({"status": JobStatus.FINISHED,
                                                 "percentage": 100.0}, None))
        wait_for_text(page, "[data-testid=summary]", "0 processing jobs")
        assert row_ids(page) == []


# -- paging -----------------------------------------------------------------------------


@pytest.mark.browser
def test_the_list_loads_a_page_at_a_time_and_filters_on_the_server(
    store: JobStore, server: str
) -> None:
    admin, api = admin_client(store, server)
    jobs = [store.create_job(name=f"batch-{i:03d}.wav", job_type="audio", user_id="ana")
            for i in range(130)]
    oldest_failed = [job.id for job in jobs[:3]]  # beyond the first page (100, newest first)
    for job_id in oldest_failed:
        store.update_job(job_id, lambda j: ({"status": JobStatus.FAILED, "error": "codec"}, None))
    with closing(api), signed_in(server, admin) as page:
        wait_for_text(page, "[data-testid=summary]", "100 of 130 jobs")
        assert len(row_ids(page)) == 100
        wait_for_text(page, "[data-testid=load-more]", "Load 30 more")

        arrived = store.create_job(name="arrived-live.wav", job_type="audio", user_id="ana")
        wait_for_text(page, "[data-testid=summary]", "101 of 131 jobs")
        wait_for_text(page, "[data-testid=load-more]", "Load 30 more")

        page.click("[data-testid=load-more]")
        wait_for_text(page, "[data-testid=summary]", "131 jobs")
        assert page.is_hidden("[data-testid=load-more]")
        server_order = [job["id"] for job in
                        api.get("/api/v1/jobs", params={"limit": 500}).json()["items"]]
        assert row_ids(page) == server_order, "each job once, in the server's order"
        assert server_order[0] == arrived.id

        # The status filter asks the server, so it finds jobs no page has loaded yet.
        page.reload()
        wait_for_text(page, "[data-testid=summary]", "100 of 131 jobs")
        page.select_option("[data-testid=status-filter]", "FAILED")
        wait_for_text(page, "[data-testid=summary]", "3 failed jobs")
        assert sorted(row_ids(page)) == sorted(oldest_failed)
        assert page.is_hidden("[data-testid=load-more]")
        page.select_option("[data-testid=status-filter]", "")
        wait_for_text(page, "[data-testid=summary]", "100 of 131 jobs")


# -- the progress chart and the history by stage ---------------------------------------


def history(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def chart_points(page: Any) -> int:
    points = page.get_attribute("[data-testid=chart-line]", "points")
    return len(points.split())


@pytest.mark.browser
def test_the_detail_charts_progress_over_time_with_stage_bands_and_groups_by_stage(
    store: JobStore, server: str
) -> None:
    admin, api = admin_client(store, server)
    plan = StagePlan.from_weights({"download": 1, "transcription": 3, "indexing": 1})
    job = store.create_job(name="lecture.mp4", job_type="video", user_id="ana", stages=plan)
    for stage, steps in (("download", 2), ("transcription", 4)):
        for step in range(steps + 1):
            report(api, job.id, 100 * step / steps, f"{stage} {step}/{steps}", stage=stage)
    plain = store.create_job(name="no-plan.mp3", job_type="audio", user_id="ana")
    report(api, plain.id, 10, "fetching", stage="fetch")
    report(api, plain.id, 40, "decoding", stage="decode")
    report(api, plain.id, 60, "still decoding", stage="decode")

    with closing(api), signed_in(server, admin) as page:
        page.goto(f"{server}/#/jobs/{job.id}")
        rows = history(api, job.id)
        assert len(rows) == 8
        page.wait_for_function(
            "n => document.querySelector('[data-testid=chart-line]')?.dataset.points == n",
            arg=len(rows), timeout=WAIT_MS,
        )
        assert page.is_visible("[data-testid=history-chart] svg")
        assert chart_points(page) == len(rows), "one point per history row"
        bands = page.eval_on_selector_all("[data-testid=chart-band]",
                                          "els => els.map(e => e.dataset.stage)")
        assert bands == ["download", "transcription", "indexing"], "the plan's bands"
        # Higher percentages are drawn higher: the last point is above the first.
        ys = [float(point.split(",")[1]) for point in
              page.get_attribute("[data-testid=chart-line]", "points").split()]
        assert ys[-1] < ys[0]

        groups = page.eval_on_selector_all(
            "[data-testid=stage-group]",
            "els => els.map(g => [g.dataset.stage, "
            "g.querySelectorAll('[data-testid=timeline-item]').length, "
            "g.querySelector('details').open])")
        assert groups == [["transcription", 5, True], ["download", 3, False]]
        assert "5 updates" in page.inner_text("[data-testid=stage-group] summary")

        # Live: a new row adds a point and, in a new stage, a new group on top.
        report(api, job.id, 50, "indexing half", stage="indexing")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=chart-line]').dataset.points == 9",
            timeout=WAIT_MS,
        )
        assert chart_points(page) == len(history(api, job.id)) == 9
        wait_for_text(page, "[data-testid=stage-group-name]", "indexing")
        assert page.eval_on_selector_all("[data-testid=stage-group]", "els => els.length") == 3
        page.screenshot(path=str(SCREENSHOT.with_name("dashboard-chart.png")), full_page=True)

        # Without a plan the bands are the time spent in each stage.
        page.goto(f"{server}/#/jobs/{plain.id}")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=chart-line]')?.dataset.points == 3",
            timeout=WAIT_MS,
        )
        bands = page.eval_on_selector_all("[data-testid=chart-band]",
                                          "els => els.map(e => e.dataset.stage)")
        assert bands == ["fetch", "decode"]
        groups = page.eval_on_selector_all("[data-testid=stage-group]",
                                           "els => els.map(g => g.dataset.stage)")
        assert groups == ["decode", "fetch"]
