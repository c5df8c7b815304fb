"""The ETA from history: the typical stage durations of finished jobs of a type (the prior),
blended with a running job's live rate; shown by the API, ``morag-jobs status`` and the
dashboard.

Histories are synthetic: finished jobs whose stages took known times, written through
``JobStore.update_job`` with the ``at`` of each history row set, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from morag_jobs.api.auth import ApiKeys
from morag_jobs.api.schemas import DERIVED_JOB_FIELDS, JobOut, JobView
from morag_jobs.eta import WHOLE_JOB, EtaEstimator, blend_remaining, estimate_remaining
from morag_jobs.events import utc_now
from morag_jobs.stages import StagePlan
from morag_jobs.store import HistoryEntry, Job, JobStatus, JobStore
from morag_jobs.store.durations import job_duration, recent_progress, stage_durations
from morag_jobs.store.records import JOB_FIELDS
from tests.api_helpers import running_api, served

PLAN = StagePlan({"download": (0, 20), "transcribe": (20, 80), "index": (80, 100)})
TWO = StagePlan({"first": (0, 50), "second": (50, 100)})
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as job_store:
        yield job_store


def write(store: JobStore, job_id: str, changes: dict[str, Any], **history: Any) -> Job:
    """Set ``changes`` and write one history row as ``history`` says (``at`` included)."""
    job = store.update_job(job_id, lambda _: (changes, history))
    assert job is not None
    return job


def finished(store: JobStore, job_type: str, plan: StagePlan | None, seconds: Sequence[float],
             start: datetime = T0, *, first_row_after: float = 0.0) -> Job:
    """A FINISHED job whose stages took ``seconds`` (one per stage of ``plan``; without a
    plan, one number: the whole job), a progress row at each stage's start and middle."""
    job = store.create_job(job_type=job_type, stages=plan)
    names = plan.names if plan is not None else [None]
    write(store, job.id, {"status": JobStatus.PROCESSING, "started_at": start},
          at=start, kind="start", stage=None, percentage=0.0)
    at = start + timedelta(seconds=first_row_after)
    for name, took in zip(names, seconds, strict=True):
        for part in (0.0, 0.5):
            write(store, job.id, {"stage": name, "stage_percent": part * 100},
                  at=at + timedelta(seconds=took * part), stage=name, kind="progress",
                  percentage=10.0)
        at += timedelta(seconds=took)
    return write(store, job.id, {"status": JobStatus.FINISHED, "percentage": 100.0,
                                 "finished_at": at},
                 at=at, kind="completion", status=JobStatus.FINISHED, percentage=100.0)


def running(store: JobStore, job_type: str | None, plan: StagePlan | None,
            points: Sequence[tuple[datetime, str | None, float]]) -> Job:
    """A PROCESSING job with a progress row per (at, stage, stage percent) of ``points``."""
    job = store.create_job(job_type=job_type, stages=plan)
    for at, stage, stage_percent in points:
        if plan is not None and stage is not None:
            overall = plan.to_overall(stage, stage_percent)
        else:
            overall = stage_percent
        job = write(store, job.id, {"status": JobStatus.PROCESSING, "stage": stage,
                                    "stage_percent": stage_percent if stage else None,
                                    "percentage": overall, "last_progress_at": at,
                                    "started_at": points[0][0]},
                    at=at, kind="progress")
    return job


def seconds(left: timedelta | None) -> float:
    assert left is not None, "an ETA was expected"
    return left.total_seconds()


# -- the prior: stage durations of finished jobs ------------------------------------------


def test_stage_durations_are_the_medians_over_finished_jobs_of_the_type(store: JobStore) -> None:
    for took in ((60, 120, 30), (70, 100, 30), (50, 140, 40)):
        finished(store, "audio", PLAN, took)
    assert stage_durations(store, "audio") == {"download": 60, "transcribe": 120, "index": 30}
    assert stage_durations(store, "video") == {}, "another type has no history"


def test_only_the_last_finished_jobs_of_the_type_count(store: JobStore) -> None:
    for day in range(3):  # old and slow
        finished(store, "audio", PLAN, (600, 600, 600), T0 + timedelta(days=day))
    for day in (10, 11):  # recent and fast
        finished(store, "audio", PLAN, (6, 12, 3), T0 + timedelta(days=day))
    failed = running(store, "audio", PLAN, [(T0 + timedelta(days=12), "download", 50)])
    write(store, failed.id, {"status": JobStatus.FAILED, "finished_at": T0 + timedelta(days=13)},
          at=T0 + timedelta(days=13), kind="failure")
    finished(store, "video", PLAN, (1, 1, 1), T0 + timedelta(days=20))
    assert stage_durations(store, "audio", limit=2) == {"download": 6, "transcribe": 12,
                                                        "index": 3}
    assert stage_durations(store, "audio")["download"] == 600, "five jobs: the median is slow"


def test_a_stage_runs_to_the_next_stage_or_the_completion(store: JobStore) -> None:
    job = store.create_job(job_type="doc", stages=PLAN)
    write(store, job.id, {"status": JobStatus.PROCESSING, "started_at": T0},
          at=T0, stage="download", kind="progress")
    write(store, job.id, {}, at=T0 + timedelta(seconds=9), stage="download", kind="progress")
    # no row in "transcribe": its time is booked to "download", which ran until "index"
    write(store, job.id, {}, at=T0 + timedelta(seconds=30), stage="index", kind="progress")
    write(store, job.id, {"status": JobStatus.FINISHED, "finished_at": T0 + timedelta(seconds=99)},
          at=T0 + timedelta(seconds=45), stage="index", kind="completion")
    assert stage_durations(store, "doc") == {"download": 30, "index": 15}


def test_a_trimmed_history_leaves_out_the_stage_it_cut(store: JobStore) -> None:
    finished(store, "audio", PLAN, (60, 120, 30))
    # Its oldest rows are gone: the first stage still shown began before its first row.
    job = finished(store, "audio", PLAN, (1, 120, 30), T0 + timedelta(hours=1),
                   first_row_after=59)
    with store.engine.begin() as connection:  # what trimming leaves: no row at the start
        connection.execute(sa.text("DELETE FROM job_events WHERE job_id = :id AND kind = 'start'"),
                           {"id": job.id})
    assert stage_durations(store, "audio")["download"] == 60, "not the median of 60 and 1"


def test_a_job_without_a_plan_is_timed_whole(store: JobStore) -> None:
    for took in (100, 300, 200):
        finished(store, "plain", None, (took,))
    assert job_duration(store, "plain") == 200
    assert job_duration(store, "nothing-finished") is None


def test_recent_progress_is_each_jobs_last_rows_oldest_first(store: JobStore) -> None:
    points = [(T0 + timedelta(seconds=i), "download", float(i)) for i in range(30)]
    one = running(store, "audio", PLAN, points)
    two = running(store, "audio", PLAN, points[:3])
    write(store, two.id, {}, at=T0 + timedelta(seconds=5), kind="retry", percentage=None)
    found = recent_progress(store, [one.id, two.id, "none"], window=20)
    assert [e.stage_percent for e in found[one.id]] == [float(i) for i in range(10, 30)]
    assert [e.kind for e in found[two.id]] == ["progress"] * 3
    assert "none" not in found


# -- the blend -----------------------------------------------------------------------------


def _job(stage: str, stage_percent: float, *, plan: StagePlan = TWO, at: datetime = T0) -> Job:
    return Job("j", job_type="t", status=JobStatus.PROCESSING, stages=plan, stage=stage,
               stage_percent=stage_percent, percentage=plan.to_overall(stage, stage_percent),
               last_progress_at=at)


def _live(job: Job, rate: float, span: float = 10.0) -> list[HistoryEntry]:
    """Two progress rows ending at ``job.last_progress_at``: ``rate`` percent a second."""
    end = job.last_progress_at
    assert end is not None
    return [HistoryEntry(1, job.id, end - timedelta(seconds=span), job.percentage - rate * span,
                         kind="progress"),
            HistoryEntry(2, job.id, end, job.percentage, kind="progress")]


PRIOR = {"first": 100.0, "second": 200.0}


def test_early_in_a_stage_the_prior_decides() -> None:
    job = _job("first", 10)
    assert seconds(blend_remaining(job, [], PRIOR, now=T0)) == pytest.approx(0.9 * 100 + 200)
    # at 1 %/s the live rate alone says 45 s for the stage; the prior (90 s) weighs 0.9
    live = _live(job, rate=1.0)
    assert seconds(blend_remaining(job, live, PRIOR, now=T0)) == pytest.approx(
        0.9 * 90 + 0.1 * 45 + 200)


def test_as_the_stage_proceeds_the_live_rate_takes_over() -> None:
    job = _job("first", 90)
    live = _live(job, rate=1.0)  # 5 % of the overall left in the stage: 5 s
    blended = seconds(blend_remaining(job, live, PRIOR, now=T0)) - 200
    assert blended == pytest.approx(0.1 * 10 + 0.9 * 5)
    assert abs(blended - 5) < abs(blended - 10), "nearer the live rate than the prior"


def test_the_later_stages_add_their_typical_durations() -> None:
    job = _job("second", 50)
    assert seconds(blend_remaining(job, [], PRIOR, now=T0)) == pytest.approx(100)
    three = _job("download", 0, plan=PLAN)
    prior = {"download": 10.0, "transcribe": 60.0}  # "index": never seen, adds 0
    assert seconds(blend_remaining(three, [], prior, now=T0)) == pytest.approx(70)


def test_time_since_the_last_report_is_taken_off_the_stage_only() -> None:
    job = _job("first", 10)
    later = T0 + timedelta(seconds=30)
    assert seconds(blend_remaining(job, [], PRIOR, now=later)) == pytest.approx(60 + 200)
    much_later = T0 + timedelta(hours=1)
    assert seconds(blend_remaining(job, [], PRIOR, now=much_later)) == pytest.approx(200)
    started = Job("j", job_type="t", status=JobStatus.PROCESSING, stages=TWO, started_at=T0)
    assert seconds(blend_remaining(started, [], PRIOR, now=later)) == pytest.approx(70 + 200), \
        "no progress yet: the first stage runs from the start"


def test_without_a_prior_the_live_rate_alone_as_before() -> None:
    job = _job("first", 40)
    live = _live(job, rate=0.5)
    expected = estimate_remaining(live, job.percentage, now=T0 + timedelta(seconds=3))
    for prior in ({}, {"second": 200.0}):  # nothing, or not the current stage
        assert blend_remaining(job, live, prior, now=T0 + timedelta(seconds=3)) == expected
    assert blend_remaining(job, [], {}, now=T0) is None, "nothing to go by"


def test_a_job_without_a_plan_is_one_stage() -> None:
    job = Job("j", job_type="t", status=JobStatus.PROCESSING, percentage=25.0,
              last_progress_at=T0)
    assert seconds(blend_remaining(job, [], {WHOLE_JOB: 400.0}, now=T0)) == pytest.approx(300)
    live = _live(job, rate=1.0)  # 75 s at the live rate
    assert seconds(blend_remaining(job, live, {WHOLE_JOB: 400.0}, now=T0)) == pytest.approx(
        0.75 * 300 + 0.25 * 75)


# -- the estimator on a real store ---------------------------------------------------------


def test_a_job_at_ten_percent_of_its_first_stage(store: JobStore) -> None:
    """0.9 x the first stage's typical time + the second's, then the live rate takes over."""
    for took in ((100, 200), (90, 210), (110, 190)):
        finished(store, "talk", TWO, took)
    start = T0 + timedelta(days=1)
    job = running(store, "talk", TWO, [(start, "first", 10)])
    eta = EtaEstimator(store)
    assert seconds(eta.remaining(job, now=start)) == pytest.approx(0.9 * 100 + 200)

    # 10 -> 90 % of the stage in 16 s (2.5 %/s of the overall): 2 s left at that rate
    end = start + timedelta(seconds=16)
    points = [(start + timedelta(seconds=2 * i), "first", 10 + 10 * i) for i in range(9)]
    fast = running(store, "talk", TWO, points)
    assert seconds(eta.remaining(fast, now=end)) == pytest.approx(0.1 * 10 + 0.9 * 2 + 200)
    assert eta.remaining_many([job, fast], now=end)[fast.id] == eta.remaining(fast, now=end)


def test_only_running_jobs_have_an_eta(store: JobStore) -> None:
    done = finished(store, "talk", TWO, (100, 200))
    waiting = store.create_job(job_type="talk", stages=TWO)
    assert EtaEstimator(store).remaining_many([done, waiting]) == {done.id: None,
                                                                   waiting.id: None}


def test_the_prior_is_read_again_only_after_its_time(store: JobStore) -> None:
    finished(store, "talk", TWO, (100, 200))
    now = [0.0]
    eta = EtaEstimator(store, ttl=60, clock=lambda: now[0])
    job = running(store, "talk", TWO, [(T0 + timedelta(days=1), "first", 0)])
    assert eta.prior(job) == {"first": 100, "second": 200}
    for _ in range(2):
        finished(store, "talk", TWO, (10, 20), T0 + timedelta(hours=1))
    now[0] = 59.0
    assert eta.prior(job) == {"first": 100, "second": 200}, "cached for a minute"
    now[0] = 61.0
    assert eta.prior(job) == {"first": 10, "second": 20}


# -- where it is shown ---------------------------------------------------------------------


def test_the_view_adds_only_derived_fields_to_the_mirror_of_job() -> None:
    assert set(DERIVED_JOB_FIELDS) == {"eta_seconds"}
    assert not DERIVED_JOB_FIELDS & set(JOB_FIELDS), "a derived field is no stored field"
    assert set(JobView.model_fields) == set(JobOut.model_fields) | DERIVED_JOB_FIELDS


def _recent_history(store: JobStore, job_type: str = "talk") -> Job:
    """Finished jobs of 100 s + 200 s, and one running at 10 % of its first stage now."""
    for took in ((100, 200), (90, 210), (110, 190)):
        finished(store, job_type, TWO, took)
    return running(store, job_type, TWO, [(utc_now(), "first", 10)])


def test_the_api_shows_the_eta_of_a_job_and_of_the_list(database_url: str) -> None:
    with running_api(database_url) as api:
        job = _recent_history(api.store)
        done = api.store.list_jobs(status=JobStatus.FINISHED, limit=1)[0]
        key = api.key("admin")
        one = api.get(f"/api/v1/jobs/{job.id}", key).json()
        assert 280 <= one["eta_seconds"] <= 290, one["eta_seconds"]
        page = {item["id"]: item for item in api.get("/api/v1/jobs", key).json()["items"]}
        assert 280 <= page[job.id]["eta_seconds"] <= 290
        assert page[done.id]["eta_seconds"] is None


def test_status_shows_the_eta_from_history(store: JobStore, database_url: str) -> None:
    job = _recent_history(store)

    def status(*extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "morag_jobs", "status", job.id, "--database", database_url,
             *extra], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert 270 <= json.loads(status("--json"))["eta_seconds"] <= 290
    eta = next(line for line in status().splitlines() if line.startswith("ETA"))
    assert re.fullmatch(r"ETA\s+~4 min (3\d|4\d) s\s*", eta), eta


@pytest.mark.browser
def test_the_dashboard_shows_the_servers_eta(sqlite_url: str) -> None:
    """The job reported 10 % within a second of starting: the page's own rate would say
    seconds; the server's prior says close to five minutes."""
    from tests.test_dashboard import WAIT_MS, signed_in  # noqa: PLC0415 - Playwright

    with JobStore(sqlite_url, create_tables=True) as store:
        job = _recent_history(store)
        write(store, job.id, {"started_at": utc_now() - timedelta(seconds=1)},
              at=utc_now(), kind="progress")
        _, admin = ApiKeys(store).create("admin", label="eta test")
        with served(sqlite_url) as (base, _), signed_in(base, admin) as page:
            cell = f'[data-job-id="{job.id}"] .eta'
            page.wait_for_selector(cell, timeout=WAIT_MS)
            page.wait_for_function("s => /^~4m/.test(document.querySelector(s).textContent)",
                                   arg=cell, timeout=WAIT_MS)
