"""The dashboard on a phone (390 x 844): each job is a card, nothing scrolls sideways.

At 390 px the job table used to be over 1,000 px wide, showing Job, Status and Progress
and clipping "Change API key" off the screen. Below the breakpoint each job is a card
(name, status, bar, stage, message, ETA, and Cancel while it runs); the job's details
and chart fit too, and so do a parent's children (cards under it) and the in-page
confirmation of Cancel. Same real server and Chromium as ``test_dashboard.py``, whose
fixtures and helpers this uses.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from morag_jobs.events import ProgressEvent
from morag_jobs.handler import ProgressHandler
from morag_jobs.stages import StagePlan
from morag_jobs.store import Family, JobStore
from tests import test_dashboard as dash

store = dash.store  # the fixtures: a SQLite store, and the app served on it
server = dash.server

PHONE = {"width": 390, "height": 844}
SCREENSHOTS = Path("/tmp")
CARD_PARTS = ["job-name", "job-status", "job-bar", "job-stage", "job-message", "job-eta",
              "row-cancel"]


def scroll_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.query_selector(selector)
    assert found is not None, f"no {selector}"
    assert found.is_visible(), f"{selector} is not visible"
    bounds = found.bounding_box()
    assert bounds is not None, f"{selector} has no box"
    return dict(bounds)


def assert_on_screen(page: Any, selector: str) -> None:
    bounds = box(page, selector)
    assert bounds["x"] >= 0 and bounds["x"] + bounds["width"] <= PHONE["width"], \
        f"{selector} is outside the screen's width: {bounds}"


@pytest.mark.browser
def test_on_a_phone_jobs_are_cards_and_nothing_scrolls_sideways(
    store: JobStore, server: str
) -> None:
    admin, api = dash.admin_client(store, server)
    plan = StagePlan.from_weights({"download": 1, "transcription-of-all-the-audio": 3})
    job = store.create_job(name="a-very-long-recording-name-without-spaces-2026-03-01.mp4",
                           job_type="video", user_id="ana", stages=plan)
    store.create_job(name="waiting.mp3", job_type="audio", user_id="ben")
    dash.report(api, job.id, 50, "Downloading", stage="download")
    dash.report(api, job.id, 40, "Transcribing chunk 3 of 8 " * 6,
                stage="transcription-of-all-the-audio")

    with closing(api), dash.signed_in(server, admin, **PHONE) as page:
        card = f'[data-job-id="{job.id}"]'
        dash.wait_for_text(page, f"{card} [data-testid=job-message]",
                           ("Transcribing chunk 3 of 8 " * 6).strip())
        assert scroll_width(page) <= PHONE["width"], "the page scrolls sideways"
        key = box(page, "[data-testid=forget-key]")
        assert_on_screen(page, "[data-testid=forget-key]")
        assert key["y"] >= 0 and key["y"] + key["height"] <= PHONE["height"]
        for part in CARD_PARTS:
            assert_on_screen(page, f"{card} [data-testid={part}]")
        name, bar = box(page, f"{card} [data-testid=job-name]"), box(page, f"{card} .progress")
        assert bar["y"] >= name["y"] + name["height"] - 1, "the bar is below the name"
        assert bar["width"] >= 300, "the bar spans the card"
        assert box(page, f"{card} [data-testid=job-message]")["width"] >= 300, \
            "the message spans the card"
        assert page.is_hidden("[data-testid=job-list] thead")
        page.screenshot(path=str(SCREENSHOTS / "dashboard-mobile.png"), full_page=True)

        page.click(f"{card} [data-testid=job-name]")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=chart-line]')?.dataset.points == 2",
            timeout=dash.WAIT_MS)
        assert scroll_width(page) <= PHONE["width"], "the details scroll sideways"
        assert_on_screen(page, "[data-testid=chart-svg]")
        assert_on_screen(page, "[data-testid=forget-key]")
        page.screenshot(path=str(SCREENSHOTS / "dashboard-mobile-detail.png"), full_page=True)


@pytest.mark.browser
def test_on_a_phone_a_parents_children_are_cards_under_it_and_cancel_fits(
    store: JobStore, server: str
) -> None:
    admin, api = dash.admin_client(store, server)
    handler = ProgressHandler(store, interval=0)
    try:
        parent = handler.create_job(
            name="canvas-with-a-rather-long-name-2026-03-01", job_type="group", user_id="ana",
            children=[{"name": "first-part-with-a-long-name-without-any-spaces.wav",
                       "user_id": "ana"}, {"name": "second.wav", "user_id": "ana"}])
        kids = Family(store).children(parent.id)
        handler.apply(ProgressEvent(percent=40, message="Transcribing " * 8), kids[0].id,
                      immediate=True)
    finally:
        handler.close()

    with closing(api), dash.signed_in(server, admin, **PHONE) as page:
        card = f'[data-testid=job-row][data-job-id="{parent.id}"]'
        dash.wait_for_text(page, f"{card} .pct", "20.0%")
        page.click(f"{card} [data-testid=job-children]")
        child = f'[data-testid=child-row][data-job-id="{kids[0].id}"]'
        dash.wait_for_text(page, f"{child} .pct", "40.0%")
        assert scroll_width(page) <= PHONE["width"], "the children scroll sideways"
        for part in CARD_PARTS:
            assert_on_screen(page, f"{child} [data-testid={part}]")
        assert box(page, child)["x"] > box(page, card)["x"], "children are indented"
        assert box(page, child)["y"] > box(page, card)["y"], "under their parent"

        page.click(f"{child} [data-testid=row-cancel]")
        for part in ("cancel-confirm", "cancel-keep"):
            assert_on_screen(page, f"{child} [data-testid={part}]")
        assert scroll_width(page) <= PHONE["width"], "the confirmation scrolls sideways"
        page.screenshot(path=str(SCREENSHOTS / "dashboard-mobile-tree.png"), full_page=True)
        page.click(f"{child} [data-testid=cancel-keep]")

        page.click(f"{card} [data-testid=job-name]")
        page.wait_for_selector(f'[data-testid=detail-child][data-job-id="{kids[1].id}"]',
                               timeout=dash.WAIT_MS)
        assert scroll_width(page) <= PHONE["width"], "the details scroll sideways"
        assert_on_screen(page, "[data-testid=detail-actions] [data-testid=cancel-job]")
        for kid in kids:
            assert_on_screen(page, f'[data-testid=detail-child][data-job-id="{kid.id}"] .progress')
        page.screenshot(path=str(SCREENSHOTS / "dashboard-mobile-parent.png"), full_page=True)
