"""The dashboard's controls: cancelling a job, and parent jobs shown as a tree.

Same real server (uvicorn in a thread) and Debian Chromium as ``test_dashboard.py``,
whose fixtures and helpers this uses. Cancelling goes through ``POST
/api/v1/jobs/{id}/cancel`` after an in-page confirmation; the page shows the server's
``detail`` when it refuses (a job that another process ended first: 409). A parent job
(``handler.create_job(children=...)``) shows "k of n children ended" and opens its
children under its row, a page at a time from ``GET /api/v1/jobs/{id}/children``, each
with its own bar; its details list them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from morag_jobs.api.auth import ApiKeys
from morag_jobs.events import ProgressEvent
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import Family, Job, JobStatus, JobStore
from tests import test_dashboard as dash

store = dash.store  # the fixtures: a SQLite store, and the app served on it
server = dash.server

SCREENSHOTS = Path("/tmp")
WAIT_MS = dash.WAIT_MS
REFUSED = ("status of 409", "status of 404")  # Chromium logs refused requests itself


@pytest.fixture
def handler(store: JobStore) -> Iterator[ProgressHandler]:
    """A handler on the test's store, writing at once: a worker process, as the page sees it."""
    running = ProgressHandler(store, interval=0)
    yield running
    running.close()


def move(handler: ProgressHandler, job_id: str, percent: float) -> None:
    result = handler.apply(ProgressEvent(percent=percent), job_id, immediate=True)
    assert result.accepted, result


def visible(page: Any, selector: str) -> bool:
    return bool(page.is_visible(selector))


def wait_visible(page: Any, selector: str) -> None:
    page.wait_for_selector(selector, state="visible", timeout=WAIT_MS)


def wait_hidden(page: Any, selector: str) -> None:
    page.wait_for_selector(selector, state="hidden", timeout=WAIT_MS)


def focused_testid(page: Any) -> str | None:
    return page.evaluate("() => document.activeElement?.dataset.testid ?? null")


def running(store: JobStore, name: str, user_id: str = "ana", percentage: float = 30.0) -> Job:
    job = store.create_job(name=name, job_type="video", user_id=user_id)
    store.update_job(job.id, lambda j: ({"status": JobStatus.PROCESSING,
                                         "percentage": percentage,
                                         "summary": f"{name} at {percentage:g}%"}, None))
    return store.require_job(job.id)


# -- cancelling ---------------------------------------------------------------------------


@pytest.mark.browser
def test_a_running_job_is_cancelled_from_its_row_and_from_its_details_after_confirming(
    store: JobStore, server: str
) -> None:
    admin, api = dash.admin_client(store, server)
    from_row = running(store, "render-row.mp4", percentage=30)
    from_detail = running(store, "render-detail.mp4", percentage=45)
    meanwhile = running(store, "ends-meanwhile.mp4", percentage=80)
    done = store.create_job(name="done.mp3", job_type="audio", user_id="ana")
    store.update_job(done.id, lambda j: ({"status": JobStatus.FINISHED, "percentage": 100.0}, None))

    with closing(api), dash.signed_in(server, admin) as page:
        row = f'[data-testid=job-row][data-job-id="{from_row.id}"]'
        wait_visible(page, f"{row} [data-testid=row-cancel]")
        assert not visible(page, f'[data-job-id="{done.id}"] [data-testid=row-cancel]'), \
            "an ended job has nothing to cancel"

        # A confirmation first, in the page; "No" changes nothing.
        page.click(f"{row} [data-testid=row-cancel]")
        wait_visible(page, f"{row} [data-testid=cancel-confirmation]")
        assert focused_testid(page) == "cancel-confirm", "the confirmation takes the focus"
        assert "Cancel this job?" in page.inner_text(f"{row} [data-testid=cancel-confirmation]")
        assert page.get_attribute(f"{row} [data-testid=cancel-confirmation]", "role") == "group"
        page.click(f"{row} [data-testid=cancel-keep]")
        wait_hidden(page, f"{row} [data-testid=cancel-confirmation]")
        assert focused_testid(page) == "row-cancel"
        assert store.require_job(from_row.id).status is JobStatus.PROCESSING
        assert page.evaluate("location.hash") in ("", "#/"), "the row was not opened"

        # Escape dismisses it too.
        page.click(f"{row} [data-testid=row-cancel]")
        wait_visible(page, f"{row} [data-testid=cancel-confirmation]")
        page.keyboard.press("Escape")
        wait_hidden(page, f"{row} [data-testid=cancel-confirmation]")

        page.click(f"{row} [data-testid=row-cancel]")
        page.click(f"{row} [data-testid=cancel-confirm]")
        dash.wait_for_text(page, f"{row} [data-testid=job-status]", "CANCELLED")
        cancelled = store.require_job(from_row.id)
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.percentage == 30.0, "the percentage reached is kept"
        assert page.inner_text(f"{row} .pct") == "30.0%"
        wait_hidden(page, f"{row} [data-testid=row-cancel]")
        assert not visible(page, f"{row} [data-testid=cancel-message]"), "no error"
        assert page.evaluate("() => document.activeElement.dataset.jobId") == from_row.id, \
            "the focus stays on the row when its button goes"

        # A job that ends (live) while its confirmation is open: nothing left to confirm.
        other = f'[data-testid=job-row][data-job-id="{meanwhile.id}"]'
        page.click(f"{other} [data-testid=row-cancel]")
        wait_visible(page, f"{other} [data-testid=cancel-confirmation]")
        store.update_job(meanwhile.id, lambda j: ({"status": JobStatus.FINISHED,
                                                   "percentage": 100.0}, None))
        dash.wait_for_text(page, f"{other} [data-testid=cancel-message]",
                           "It ended meanwhile (FINISHED); there is nothing to cancel.")
        assert not visible(page, f"{other} [data-testid=cancel-confirmation]")
        assert not visible(page, f"{other} [data-testid=row-cancel]")

        # From the job's details.
        page.click(f'[data-job-id="{from_detail.id}"] [data-testid=job-name]')
        wait_visible(page, "[data-testid=job-detail]")
        dash.wait_for_text(page, "[data-testid=detail-title]", "render-detail.mp4")
        detail = "[data-testid=detail-actions]"
        wait_visible(page, f"{detail} [data-testid=cancel-job]")
        page.click(f"{detail} [data-testid=cancel-job]")
        wait_visible(page, f"{detail} [data-testid=cancel-confirmation]")
        confirmation = page.inner_text(f"{detail} [data-testid=cancel-confirmation]")
        assert "next progress report" in confirmation
        page.screenshot(path=str(SCREENSHOTS / "dashboard-cancel-confirm.png"), full_page=True)
        page.click(f"{detail} [data-testid=cancel-confirm]")
        dash.wait_for_text(page, '#detail-fields [data-field="status"]', "CANCELLED")
        wait_hidden(page, f"{detail} [data-testid=cancel-job]")
        assert page.inner_text(f"{detail} [data-testid=cancel-message]") == "Cancelled."
        assert store.require_job(from_detail.id).status is JobStatus.CANCELLED
        assert page.inner_text("[data-testid=detail-bar-text]") == "45.0%"
        page.wait_for_function(
            "() => document.querySelector('[data-testid=timeline]').textContent"
            ".includes('cancelled by an admin')", timeout=WAIT_MS)

        # An ended job's details offer no Cancel.
        page.goto(f"{server}/#/jobs/{done.id}")
        dash.wait_for_text(page, "[data-testid=detail-title]", "done.mp3")
        dash.wait_for_text(page, '#detail-fields [data-field="status"]', "FINISHED")
        assert not visible(page, f"{detail} [data-testid=cancel-job]")


@pytest.mark.browser
def test_a_job_another_process_ended_first_shows_the_servers_409_message(
    store: JobStore,
) -> None:
    """The stream here polls once a minute, so the page has not heard that the job ended
    when the user confirms: the server refuses (409) and the page says why, then shows the
    job as the server has it."""
    _, user = ApiKeys(store).create("user", "ana", label="dashboard test")
    mine = running(store, "mine.mp4", user_id="ana")
    theirs = running(store, "theirs.mp4", user_id="ben")
    with dash.serving(dash.dashboard_app(store, stream_poll_interval=60.0)) as slow, \
            dash.signed_in(slow, user, expected_errors=REFUSED) as page:
        row = f'[data-testid=job-row][data-job-id="{mine.id}"]'
        wait_visible(page, f"{row} [data-testid=row-cancel]")
        assert dash.row_ids(page) == [mine.id], "a user key lists its own jobs only"

        page.click(f"{row} [data-testid=row-cancel]")
        wait_visible(page, f"{row} [data-testid=cancel-confirmation]")
        # Another process (a worker) finishes the job before the user confirms.
        store.update_job(mine.id, lambda j: ({"status": JobStatus.FINISHED, "percentage": 100.0,
                                              "summary": "done elsewhere"}, None))
        page.click(f"{row} [data-testid=cancel-confirm]")
        message = f"{row} [data-testid=cancel-message]"
        dash.wait_for_text(page, message, f"job {mine.id} already ended (FINISHED)")
        assert page.get_attribute(message, "role") == "alert"
        assert "error" in (page.get_attribute(message, "class") or "")
        # The job as the server has it now, without waiting for the stream.
        dash.wait_for_text(page, f"{row} [data-testid=job-status]", "FINISHED")
        wait_hidden(page, f"{row} [data-testid=row-cancel]")
        assert visible(page, message), "the message stays when the button goes"
        assert page.evaluate("() => document.activeElement.dataset.jobId") == mine.id, \
            "the focus stays on the row"
        assert store.require_job(mine.id).status is JobStatus.FINISHED
        page.screenshot(path=str(SCREENSHOTS / "dashboard-cancel-409.png"), full_page=True)

        # Someone else's job: not listed, and its details are refused with no Cancel.
        page.goto(f"{slow}/#/jobs/{theirs.id}")
        dash.wait_for_text(page, "[data-testid=error]",
                           f"no job {theirs.id!r} that this key may read; check the id")
        assert not visible(page, "[data-testid=detail-actions] [data-testid=cancel-job]")
        assert store.require_job(theirs.id).status is JobStatus.PROCESSING


# -- parent jobs ----------------------------------------------------------------------------


def canvas(handler: ProgressHandler, n: int = 3, name: str = "canvas") -> tuple[Job, list[Job]]:
    parent = handler.create_job(name=name, job_type="group", user_id="ana",
                                children=[{"name": f"part-{i}", "job_type": "chunk",
                                           "user_id": "ana"} for i in range(n)])
    return parent, Family(handler.store).children(parent.id, limit=None)


def child_rows(page: Any, parent_id: str) -> list[list[str]]:
    return page.evaluate(
        """id => [...document.querySelectorAll(`[data-testid=child-row][data-parent-id="${id}"]`)]
            .map(r => [r.dataset.jobId, r.querySelector('.pct').textContent])""", parent_id)


def wait_pct(page: Any, selector: str, text: str) -> None:
    dash.wait_for_text(page, f"{selector} .pct", text)
    width = page.evaluate("s => document.querySelector(s).style.width", f"{selector} .bar")
    assert width == text.replace(".0%", "%") or float(width[:-1]) == pytest.approx(
        float(text[:-1]), abs=0.05), (selector, width, text)


@pytest.mark.browser
def test_a_parent_shows_k_of_n_and_opens_its_children_each_with_its_bar(
    store: JobStore, server: str, handler: ProgressHandler
) -> None:
    admin, api = dash.admin_client(store, server)
    alone = store.create_job(name="alone.mp4", job_type="video", user_id="ana")
    parent, kids = canvas(handler)
    move(handler, kids[0].id, 30)
    assert handler.handle_job_completion(kids[1].id, True, "part-1 indexed")
    move(handler, kids[2].id, 60)
    assert store.require_job(parent.id).percentage == pytest.approx(190 / 3)

    with closing(api), dash.signed_in(server, admin) as page:
        top = f'[data-testid=job-row][data-job-id="{parent.id}"]'
        wait_pct(page, top, "63.3%")
        assert dash.row_ids(page) == [parent.id, alone.id], "children are under their parent"
        dash.wait_for_text(page, "[data-testid=summary]", "5 jobs")
        toggle = f"{top} [data-testid=job-children]"
        assert page.inner_text(toggle) == "1 of 3 children ended"
        assert page.get_attribute(toggle, "aria-expanded") == "false"
        assert child_rows(page, parent.id) == []

        page.click(toggle)
        page.wait_for_function(
            "id => document.querySelectorAll(`[data-testid=child-row][data-parent-id='${id}']`)"
            ".length === 3", arg=parent.id, timeout=WAIT_MS)
        assert page.get_attribute(toggle, "aria-expanded") == "true"
        assert page.evaluate("location.hash") in ("", "#/"), "the toggle does not open the job"
        assert child_rows(page, parent.id) == [[kids[0].id, "30.0%"], [kids[1].id, "100.0%"],
                                               [kids[2].id, "60.0%"]], "the canvas's order"
        order = page.evaluate(
            "() => [...document.querySelectorAll('#job-rows > tr')].map(r => r.dataset.jobId"
            " || r.dataset.testid)")
        assert order == [parent.id, kids[0].id, kids[1].id, kids[2].id, alone.id], \
            "the children right under their parent"
        kid = f'[data-testid=child-row][data-job-id="{kids[1].id}"]'
        assert page.inner_text(f"{kid} [data-testid=job-status]") == "FINISHED"
        assert not visible(page, f"{kid} [data-testid=row-cancel]")
        assert visible(page, f'[data-testid=child-row][data-job-id="{kids[0].id}"] '
                             "[data-testid=row-cancel]")

        # Live: a child's progress moves its bar and its parent's.
        move(handler, kids[0].id, 90)
        wait_pct(page, f'[data-testid=child-row][data-job-id="{kids[0].id}"]', "90.0%")
        wait_pct(page, top, "83.3%")
        assert handler.handle_job_completion(kids[2].id, True, "part-2 indexed")
        dash.wait_for_text(page, toggle, "2 of 3 children ended")
        wait_pct(page, f'[data-testid=child-row][data-job-id="{kids[2].id}"]', "100.0%")
        page.screenshot(path=str(SCREENSHOTS / "dashboard-tree.png"), full_page=True)

        page.click(toggle)
        page.wait_for_function("() => !document.querySelector('[data-testid=child-row]')",
                               timeout=WAIT_MS)
        assert page.get_attribute(toggle, "aria-expanded") == "false"

        # A child whose parent is not listed (another status) is listed by itself.
        page.select_option("[data-testid=status-filter]", "FINISHED")
        dash.wait_for_text(page, "[data-testid=summary]", "2 finished jobs")
        assert sorted(dash.row_ids(page)) == sorted([kids[1].id, kids[2].id])
        page.select_option("[data-testid=status-filter]", "")
        dash.wait_for_text(page, "[data-testid=summary]", "5 jobs")

        # The parent's details list its children, each with its bar.
        page.click(f"{top} [data-testid=job-name]")
        dash.wait_for_text(page, "[data-testid=detail-title]", "canvas")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=detail-child]').length === 3",
            timeout=WAIT_MS)
        assert page.inner_text("[data-testid=detail-bar-text]") == "96.7%"
        assert page.inner_text('#detail-fields [data-field="children"]') == \
            "2 of 3 children ended"
        items = page.eval_on_selector_all(
            "[data-testid=detail-child]",
            "els => els.map(e => [e.dataset.jobId, e.querySelector('.name').textContent,"
            " e.querySelector('.pct').textContent, e.querySelector('.status').textContent])")
        assert items == [[kids[0].id, "part-0", "90.0%", "PROCESSING"],
                         [kids[1].id, "part-1", "100.0%", "FINISHED"],
                         [kids[2].id, "part-2", "100.0%", "FINISHED"]]
        move(handler, kids[0].id, 95)
        wait_pct(page, f'[data-testid=detail-child][data-job-id="{kids[0].id}"]', "95.0%")
        dash.wait_for_text(page, "[data-testid=detail-bar-text]", "98.3%")
        assert "cancel" in page.inner_text("[data-testid=detail-actions]").lower()
        page.screenshot(path=str(SCREENSHOTS / "dashboard-parent-detail.png"), full_page=True)

        # A child's details link back to its parent.
        page.click(f'[data-testid=detail-child][data-job-id="{kids[0].id}"] .name')
        dash.wait_for_text(page, "[data-testid=detail-title]", "part-0")
        assert page.inner_text("[data-testid=detail-parent]") == "canvas"
        assert not visible(page, "[data-testid=detail-children]")


@pytest.mark.browser
def test_a_large_parent_loads_its_children_a_page_at_a_time(
    store: JobStore, server: str, handler: ProgressHandler
) -> None:
    admin, api = dash.admin_client(store, server)
    parent, kids = canvas(handler, n=25, name="big canvas")
    move(handler, kids[24].id, 50)

    with closing(api), dash.signed_in(server, admin) as page:
        top = f'[data-testid=job-row][data-job-id="{parent.id}"]'
        dash.wait_for_text(page, f"{top} [data-testid=job-children]", "0 of 25 children ended")
        assert dash.row_ids(page) == [parent.id]
        page.click(f"{top} [data-testid=job-children]")
        more = f'[data-testid=kids-more-row][data-parent-id="{parent.id}"]'
        dash.wait_for_text(page, f"{more} [data-testid=kids-more]", "Show 5 more")
        assert page.inner_text(f"{more} .kids-info") == "5 more children not shown"
        assert [kid for kid, _ in child_rows(page, parent.id)] == [k.id for k in kids[:20]]
        page.click(f"{more} [data-testid=kids-more]")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=child-row]').length === 25",
            timeout=WAIT_MS)
        assert child_rows(page, parent.id)[-1] == [kids[24].id, "50.0%"]
        assert not page.query_selector(more), "nothing more to load"

        # The details page through them the same way.
        page.goto(f"{server}/#/jobs/{parent.id}")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=detail-child]').length === 25",
            timeout=WAIT_MS)  # the list loaded them all already
        assert not visible(page, "[data-testid=job-detail] [data-testid=kids-more]")

    # A fresh page (nothing loaded yet): the details ask for a page of children first.
    with dash.signed_in(server, admin) as page:
        page.goto(f"{server}/#/jobs/{parent.id}")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=detail-child]').length === 20",
            timeout=WAIT_MS)
        dash.wait_for_text(page, "#kids-more", "Show 5 more")
        page.click("#kids-more")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=detail-child]').length === 25",
            timeout=WAIT_MS)
        assert page.is_hidden("#kids-more")
