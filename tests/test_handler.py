"""ProgressHandler: the rules of job state, coalescing, job resolution, listeners, the seed's API.

Every test that touches the job table runs on a real SQLite file and on the real
PostgreSQL (the ``database_url`` fixture). Coalesced writes are flushed before asserting.
"""

from __future__ import annotations

import math
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from handler_helpers import (
    COMPLETER,
    EVENTS_PER_WORKER,
    PLAN,
    WORKERS,
    WorkerReport,
    progress_history,
    report_progress_in_process,
)
from log_helpers import capture_logs

from morag_jobs import InvalidProgress, ProgressEvent
from morag_jobs.compat import ProgressHandler
from morag_jobs.mappings import CACHE_MAX as MAPPING_CACHE_MAX
from morag_jobs.stages import clear_stage_plans
from morag_jobs.store import Job, JobStatus, JobStore, MappingStore

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_stage_registry() -> Iterator[None]:
    """Also forgets which unknown stages were already warned about."""
    clear_stage_plans()
    yield
    clear_stage_plans()


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as job_store:
        yield job_store


@pytest.fixture
def handler(store: JobStore) -> Iterator[ProgressHandler]:
    progress_handler = ProgressHandler(store=store, interval=0.5)
    yield progress_handler
    progress_handler.close()


@pytest.fixture
def slow_handler(store: JobStore) -> Iterator[ProgressHandler]:
    """A handler whose coalescing window (30 s) outlasts the test: only flush() writes."""
    progress_handler = ProgressHandler(store=store, interval=30)
    yield progress_handler
    progress_handler.close()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def applied_now(handler: ProgressHandler, job_id: str, **fields: Any) -> Job:
    """Apply one event at once and return the job as written; fails when it was refused."""
    result = handler.apply(ProgressEvent(**fields), job_id, immediate=True)
    assert result.accepted and result.reason == "applied", f"expected {fields} to apply: {result}"
    assert result.job is not None
    return result.job


@contextmanager
def other_handler(url: str, **options: Any) -> Iterator[ProgressHandler]:
    """A second handler with its own JobStore on the same database: another process's view."""
    with JobStore(url) as other_store:
        other = ProgressHandler(store=other_store, interval=0.5, mapping_ttl=0, **options)
        try:
            yield other
        finally:
            other.close()


def messages(store: JobStore, job_id: str) -> list[str | None]:
    return [event.message for event in store.history(job_id)]


# -- stage mapping -----------------------------------------------------------------------


def test_without_a_stage_plan_percentages_are_overall(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="plain")
    assert handler.process_log_line("Processing... 40%", job_id="plain")
    assert handler.process_log_line('{"event": "Stage: transcription (67%)"}', job_id="plain")
    handler.flush()
    job = store.require_job("plain")
    assert job.percentage == 67.0, "a job without a plan takes the stage's 67% as overall"
    assert job.stage == "transcription", "the stage named is still recorded"


def test_a_stage_percentage_is_mapped_onto_the_stage_band(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="planned", stages=PLAN)
    assert handler.process_log_line('{"event": "Stage: processing (50%)"}', job_id="planned")
    handler.flush()
    job = store.require_job("planned")
    assert job.percentage == 40.0, "processing is 10..70, so 50% of it is 40% overall"
    assert job.stage == "processing"
    assert job.stage_percent == 50.0, "the stage-relative percentage is kept beside it"


def test_an_event_naming_no_stage_is_relative_to_the_current_stage(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="current", stages=PLAN)
    handler.process_log_line('{"event": "Stage: indexing (0%)"}', job_id="current")
    handler.flush()
    assert handler.process_log_line("Processing... 50%", job_id="current")
    handler.flush()
    job = store.require_job("current")
    assert job.percentage == 85.0, "50% with no stage is 50% of indexing (70..100): 85%"
    assert (job.stage, job.stage_percent) == ("indexing", 50.0)


@pytest.mark.parametrize("progress", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_the_seeds_processing_callback_is_the_processing_band(
    store: JobStore, handler: ProgressHandler, progress: float
) -> None:
    """The seed's ``mapped = 10 + progress * 60`` is ``processing = 10..70``."""
    store.create_job(job_id="callback", stages=PLAN)
    job = applied_now(handler, "callback", percent=progress * 100, stage="processing")
    assert job.percentage == pytest.approx(10 + progress * 60), "10 + progress * 60"


def test_an_unknown_stage_warns_and_counts_as_the_current_stage(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="unknown", stages=PLAN)
    applied_now(handler, "unknown", percent=0.0, stage="processing")
    with capture_logs() as logs:
        job = applied_now(handler, "unknown", percent=50.0, stage="transcoding")
    assert job.percentage == 40.0, "an unknown stage is read as the current one (processing)"
    assert job.stage == "processing"
    warnings = [e for e in logs if e["log_level"] == "warning" and e.get("stage") == "transcoding"]
    assert warnings, f"a warning names the unknown stage; logged: {logs}"


def test_stages_only_move_forward(store: JobStore, handler: ProgressHandler) -> None:
    store.create_job(job_id="forward", stages=PLAN)
    applied_now(handler, "forward", percent=10.0, stage="indexing")
    result = handler.apply(
        ProgressEvent(percent=90.0, stage="processing", message="late"), "forward", immediate=True
    )
    assert not result.accepted and result.reason == "stage_behind", (
        f"an event for a stage the job has left is ignored, got {result}"
    )
    job = store.require_job("forward")
    assert (job.stage, job.percentage) == ("indexing", 73.0), "the job stays in indexing at 73%"
    assert job.summary != "late"


def test_a_stage_change_clears_the_counts_of_the_stage_before(
    store: JobStore, handler: ProgressHandler
) -> None:
    """"items 150/150" of the download must not show during the processing stage."""
    store.create_job(job_id="counts", stages=PLAN)
    job = applied_now(handler, "counts", percent=100.0, stage="download", current=150,
                      total=150)
    assert (job.current, job.total) == (150, 150)
    job = applied_now(handler, "counts", percent=20.0, stage="processing")
    assert (job.stage, job.current, job.total) == ("processing", None, None)
    job = applied_now(handler, "counts", percent=50.0, stage="processing", current=3, total=6)
    assert (job.current, job.total) == (3, 6), "the new stage's own counts are kept"
    job = applied_now(handler, "counts", percent=60.0, stage="processing")
    assert (job.current, job.total) == (3, 6), "within a stage, counts stay until replaced"


def test_a_success_without_a_message_keeps_the_last_one_and_the_result(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="kept")
    applied_now(handler, "kept", percent=90.0, message="aligned 412 segments")
    assert handler.handle_job_completion("kept", True, result={"words": 3, "lang": "en"})
    job = store.require_job("kept")
    assert (job.status, job.summary) == (JobStatus.FINISHED, "aligned 412 segments")
    assert job.metadata["result"] == {"words": 3, "lang": "en"}
    assert [e.kind for e in store.history("kept")][-1] == "completion", (
        "the ending itself is in the history")


# -- monotonic percentage ----------------------------------------------------------------


def test_a_lower_percentage_never_lowers_the_job_but_updates_its_message(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="mono")
    handler.apply(ProgressEvent(percent=60.0, message="at sixty"), "mono")
    handler.flush()
    handler.apply(ProgressEvent(percent=30.0, message="re-reading"), "mono")
    handler.flush()
    job = store.require_job("mono")
    assert job.percentage == 60.0, "a lower percentage does not lower the job"
    assert job.summary == "re-reading", "but its message is the job's latest summary"


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        pytest.param(
            {"percent": 80.0, "message": "eighty"},
            {"percent": 30.0, "message": "thirty"},
            {"percentage": 80.0},
            id="a lower percentage",
        ),
        pytest.param(
            {"percent": 50.0, "timestamp": at(10)},
            {"percent": 60.0, "timestamp": at(5)},
            {"percentage": 50.0, "last_event_at": at(10)},
            id="an older timestamp",
        ),
        pytest.param(
            {"percent": 50.0, "sequence": 3},
            {"percent": 60.0, "sequence": 2},
            {"percentage": 50.0, "last_sequence": 3},
            id="a lower sequence",
        ),
        pytest.param(
            {"percent": 10.0, "stage": "indexing"},
            {"percent": 50.0, "stage": "processing"},
            {"percentage": 73.0, "stage": "indexing"},
            id="an earlier stage",
        ),
    ],
)
def test_events_coalesced_into_one_write_obey_the_same_rules(
    store: JobStore,
    slow_handler: ProgressHandler,
    first: dict[str, Any],
    second: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    """Two events in one coalescing window end as they would if written one by one."""
    store.create_job(job_id="window", stages=PLAN if "stage" in first else None)
    slow_handler.apply(ProgressEvent(percent=1.0, timestamp=at(0), sequence=1), "window")
    slow_handler.flush()  # the window opens now: the next two events are merged in memory
    slow_handler.apply(ProgressEvent(**first), "window")
    slow_handler.apply(ProgressEvent(**second), "window")
    slow_handler.flush()
    job = store.require_job("window")
    got = {name: getattr(job, name) for name in expected}
    assert got == expected, (
        f"after {first} then {second}, the second must not undo the first: "
        f"expected {expected}, got {got}"
    )


# -- status ------------------------------------------------------------------------------


def test_a_job_is_pending_until_progress_above_zero(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="pending")
    job = applied_now(handler, "pending", percent=0.0, message="queued")
    assert job.status is JobStatus.PENDING and job.started_at is None, "0% is still PENDING"
    job = applied_now(handler, "pending", percent=0.5)
    assert job.status is JobStatus.PROCESSING, "any progress above 0 makes it PROCESSING"
    assert job.started_at is not None, "and records when it started"


def test_full_progress_does_not_finish_the_job(store: JobStore, handler: ProgressHandler) -> None:
    store.create_job(job_id="full")
    handler.process_log_line("Processing... 100%", job_id="full")
    handler.flush()
    job = store.require_job("full")
    assert job.percentage == 100.0
    assert job.status is JobStatus.PROCESSING, "only a completion finishes a job, not 100%"
    assert job.finished_at is None


def test_completion_finishes_the_job_at_100_percent(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="done", stages=PLAN)
    handler.apply(ProgressEvent(percent=20.0, stage="processing"), "done")
    assert handler.handle_job_completion("done", True, "all done") is True
    job = store.require_job("done")
    assert job.status is JobStatus.FINISHED
    assert job.percentage == 100.0 and job.finished_at is not None
    assert job.summary == "all done" and job.error is None
    assert job.stage == "indexing", "a finished job with a plan ends in its last stage"
    assert store.history("done")[-1].kind == "completion"


def test_an_error_fails_the_job_and_keeps_the_percentage_reached(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="broken")
    handler.apply(ProgressEvent(percent=45.0, message="halfway"), "broken")
    assert handler.handle_job_error("broken", "ffmpeg exited with 1") is True
    job = store.require_job("broken")
    assert job.status is JobStatus.FAILED
    assert job.percentage == 45.0, "FAILED keeps the percentage reached (MoRAG reset it to 0)"
    assert job.error == "ffmpeg exited with 1", "the error is recorded"
    assert job.finished_at is not None


def test_cancellation_cancels_the_job_and_keeps_its_percentage(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="revoked")
    handler.apply(ProgressEvent(percent=30.0), "revoked")
    assert handler.handle_job_cancellation("revoked", "revoked by user") is True
    job = store.require_job("revoked")
    assert job.status is JobStatus.CANCELLED
    assert job.percentage == 30.0 and job.summary == "revoked by user"


def test_a_terminal_job_ignores_late_progress(
    database_url: str, store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="ended")
    handler.apply(ProgressEvent(percent=50.0), "ended")
    handler.handle_job_completion("ended", True, "finished")

    late = handler.apply(ProgressEvent(percent=60.0, message="late"), "ended", immediate=True)
    assert not late.accepted and late.reason == "terminal", f"late progress is refused: {late}"
    assert handler.stats.outcomes["terminal"] == 1, "and counted"

    # Another process never saw the completion: its late event reaches the database.
    with other_handler(database_url) as other:
        result = other.apply(ProgressEvent(percent=70.0, message="later"), "ended", immediate=True)
        assert result.reason == "terminal", f"the database refuses it too: {result}"
        assert other.stats.outcomes["terminal"] == 1
    job = store.require_job("ended")
    assert job.status is JobStatus.FINISHED and job.percentage == 100.0
    assert job.summary == "finished", "late progress changes nothing"
    assert job.ignored_count == 1, "the event that reached the row is counted on it"


def test_completing_an_ended_job_returns_false(store: JobStore, handler: ProgressHandler) -> None:
    store.create_job(job_id="twice")
    assert handler.handle_job_completion("twice", True, "first") is True
    assert handler.handle_job_completion("twice", True, "second") is False, "already ended"
    assert handler.handle_job_error("twice", "too late") is False
    assert handler.handle_job_cancellation("twice") is False
    job = store.require_job("twice")
    assert (job.status, job.summary, job.error) == (JobStatus.FINISHED, "first", None)


# -- out of order and duplicates ---------------------------------------------------------


def test_an_event_older_than_the_last_applied_one_is_ignored(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="stale")
    applied_now(handler, "stale", percent=40.0, timestamp=at(10), message="at ten")
    result = handler.apply(
        ProgressEvent(percent=55.0, timestamp=at(9), message="from the past"),
        "stale",
        immediate=True,
    )
    assert not result.accepted and result.reason == "stale", f"older is ignored: {result}"
    job = store.require_job("stale")
    assert (job.percentage, job.summary) == (40.0, "at ten"), "nothing of it is applied"
    assert job.last_event_at == at(10)


def test_a_repeated_sequence_number_is_ignored(store: JobStore, handler: ProgressHandler) -> None:
    store.create_job(job_id="seq")
    applied_now(handler, "seq", percent=30.0, sequence=7, message="seven")
    again = handler.apply(
        ProgressEvent(percent=30.0, sequence=7, message="seven again"), "seq", immediate=True
    )
    assert again.reason == "stale", f"a delivery of sequence 7 twice applies once: {again}"
    assert messages(store, "seq") == ["seven"], "the duplicate left no history"
    applied_now(handler, "seq", percent=35.0, sequence=8)
    assert store.require_job("seq").last_sequence == 8


# -- invalid percentages -----------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_nan_infinite_or_negative_percent_is_rejected(
    store: JobStore, handler: ProgressHandler, value: float
) -> None:
    with pytest.raises(InvalidProgress, match=r"invalid progress .*(finite|negative)"):
        ProgressEvent(percent=value)
    store.create_job(job_id="sane")
    handler.register_job_mapping("worker-nan", "sane")
    assert handler.process_remote_worker_progress("worker-nan", value, "bad") is False
    assert handler.stats.outcomes["rejected"] == 1, "the refusal is counted as rejected"
    handler.flush()
    job = store.require_job("sane")
    assert (job.percentage, job.status, job.summary) == (0.0, JobStatus.PENDING, "")


def test_a_percentage_above_100_is_clamped_with_a_warning(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="over")
    handler.register_job_mapping("worker-over", "over")
    with capture_logs() as logs:
        assert handler.process_remote_worker_progress("worker-over", 150.0, "overshoot") is True
        handler.flush()
    job = store.require_job("over")
    assert job.percentage == 100.0, "150% is clamped to 100%"
    assert job.status is JobStatus.PROCESSING, "a clamped 100% does not finish the job either"
    warned = [e for e in logs if e["log_level"] == "warning" and e.get("percent") == 150.0]
    assert warned, f"the clamp is logged as a warning naming 150; logged: {logs}"


# -- ApplyResult and retry ---------------------------------------------------------------


def test_apply_now_says_what_became_of_the_event(store: JobStore, handler: ProgressHandler) -> None:
    store.create_job(job_id="verdicts", stages=PLAN)
    ok = handler.apply(
        ProgressEvent(percent=50.0, stage="processing", timestamp=at(2)), "verdicts", immediate=True
    )
    assert (ok.accepted, ok.reason, ok.job_id) == (True, "applied", "verdicts")
    assert ok.job == store.require_job("verdicts"), "the snapshot is the row as written"
    assert bool(ok) is True

    stale = handler.apply(ProgressEvent(percent=60.0, timestamp=at(1)), "verdicts", immediate=True)
    assert (bool(stale), stale.reason) == (False, "stale")
    behind = handler.apply(
        ProgressEvent(percent=60.0, stage="download", timestamp=at(3)), "verdicts", immediate=True
    )
    assert (bool(behind), behind.reason) == (False, "stage_behind")
    handler.handle_job_completion("verdicts", True)
    late = handler.apply(ProgressEvent(percent=10.0, timestamp=at(4)), "verdicts", immediate=True)
    assert (bool(late), late.reason) == (False, "terminal")
    assert store.require_job("verdicts").version == 2, "one progress write and the completion"


def test_only_a_retry_with_reset_lowers_the_percentage(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="again", stages=PLAN)
    applied_now(handler, "again", percent=50.0, stage="processing", timestamp=at(5))
    assert handler.handle_job_retry("again", "retry 1 of 3") is True
    job = store.require_job("again")
    assert (job.percentage, job.summary) == (40.0, "retry 1 of 3"), "no reset: percentage kept"

    assert handler.handle_job_retry("again", "retry 2 of 3", reset=True) is True
    job = store.require_job("again")
    assert job.percentage == 0.0, "reset=True starts the job over"
    assert job.stage is None and job.status is JobStatus.PROCESSING
    job = applied_now(handler, "again", percent=10.0, stage="download", timestamp=at(1))
    assert (job.percentage, job.stage) == (1.0, "download"), (
        "after a reset, earlier stages and timestamps apply again"
    )
    assert [e.kind for e in store.history("again")] == [
        "progress",
        "retry",
        "retry",
        "progress",
    ]


# -- coalescing --------------------------------------------------------------------------


def test_a_burst_of_events_becomes_a_few_writes_and_the_latest_wins(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="burst")
    interval = 0.5
    began = time.monotonic()
    for n in range(1, 1001):
        assert handler.apply(ProgressEvent(percent=n / 10, message=f"event {n}"), "burst")
        if n % 100 == 0:
            time.sleep(0.11)  # spread the burst over ~1.1 s: the writer thread wakes meanwhile
    handler.flush()
    elapsed = time.monotonic() - began

    job = store.require_job("burst")
    history = store.history("burst")
    bound = int(elapsed // interval) + 2  # one per interval, the first at once, the flush
    assert 2 <= job.version <= bound, (
        f"1000 events in {elapsed:.2f}s at interval {interval}s: expected 2..{bound} writes, "
        f"got {job.version}"
    )
    assert len(history) == job.version, "each write left one history row"
    assert (job.percentage, job.summary) == (100.0, "event 1000"), "the last event wins"
    assert handler.stats.writes == job.version
    assert handler.stats.outcomes["queued"] == 1000
    percents = [event.percentage for event in history]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert all(event.message == f"event {round(event.percentage * 10)}" for event in history), (
        "the history keeps what was written: each row is one of the events, whole"
    )


def test_completion_is_written_at_once_and_seen_by_another_store(
    database_url: str, store: JobStore
) -> None:
    store.create_job(job_id="now")
    with closing(ProgressHandler(store=store, interval=60)) as handler:
        for n in (10, 20, 30):
            handler.apply(ProgressEvent(percent=n, message=f"step {n}"), "now")
        assert handler.handle_job_completion("now", True, "complete") is True
        with JobStore(database_url) as elsewhere:
            job = elsewhere.require_job("now")
            assert job.status is JobStatus.FINISHED, "visible to another store without a flush"
            events = elsewhere.history("now")
    assert [e.kind for e in events][-1] == "completion"
    assert events[-2].message == "step 30" and events[-2].percentage == 30.0, (
        "the pending progress was written just before the completion"
    )


def test_close_writes_what_is_pending(store: JobStore) -> None:
    store.create_job(job_id="closing")
    handler = ProgressHandler(store=store, interval=60)
    handler.apply(ProgressEvent(percent=5.0), "closing")
    handler.flush()  # the 60 s window starts now: nothing more is written on its own
    for n in range(6, 21):
        handler.apply(ProgressEvent(percent=float(n), message=f"at {n}"), "closing")
    assert store.require_job("closing").percentage == 5.0, "the rest waits for the window"
    handler.close()
    job = store.require_job("closing")
    assert (job.percentage, job.summary) == (20.0, "at 20"), "close() flushed the pending event"


EXIT_SCRIPT = """
import sys
from morag_jobs import ProgressEvent
from morag_jobs.compat import ProgressHandler

url, job_id = sys.argv[1], sys.argv[2]
handler = ProgressHandler(database_url=url, interval=60)
for n in range(1, 51):
    handler.apply(ProgressEvent(percent=float(n), message=f"step {n}"), job_id)
# no flush, no close: a clean exit must write what is pending
"""


def test_a_clean_process_exit_writes_pending_progress(database_url: str, store: JobStore) -> None:
    store.create_job(job_id="exiting")
    finished = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, database_url, "exiting"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, f"the script should exit cleanly: {finished.stderr}"
    job = store.require_job("exiting")
    assert (job.percentage, job.summary) == (50.0, "step 50"), (
        "the last event, pending in a 60 s window, was written at exit"
    )
    assert job.version <= 3, f"and coalesced on the way (got {job.version} writes for 50 events)"


# -- job resolution ----------------------------------------------------------------------


def test_an_explicit_job_id_wins_over_the_one_in_the_line(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="named")
    line = '{"event": "Processing... 40%", "job_id": "from-the-line"}'
    assert handler.process_log_line(line, job_id="named")
    handler.flush()
    assert store.require_job("named").percentage == 40.0
    assert store.get_job("from-the-line") is None, "the argument decides, not the line"


def test_a_log_line_carrying_a_job_id_resolves_its_job(
    store: JobStore, handler: ProgressHandler
) -> None:
    line = '{"event": "Processing... 40%", "job_id": "job-from-line"}'
    assert handler.process_log_line(line), "the line names its job itself"
    handler.flush()
    job = store.get_job("job-from-line")
    assert job is not None and job.percentage == 40.0, "created on first progress, at 40%"


def test_a_worker_mapping_is_persisted_for_other_handlers(
    database_url: str, store: JobStore, handler: ProgressHandler
) -> None:
    handler.register_job_mapping("gpu-7", "mapped-job")
    assert MappingStore(store).get("worker", "gpu-7") == "mapped-job", "stored in job_mappings"
    with other_handler(database_url) as other:
        assert other.get_job_id_for_worker("gpu-7") == "mapped-job", "another process sees it"
        assert other.process_remote_worker_progress("gpu-7", 25.0, "from elsewhere")
        other.flush()
    assert store.require_job("mapped-job").percentage == 25.0


def test_an_unregistered_worker_maps_to_nothing(
    database_url: str, store: JobStore, handler: ProgressHandler
) -> None:
    handler.register_job_mapping("gpu-8", "was-mapped")
    assert handler.unregister_job_mapping("gpu-8") is True
    assert handler.unregister_job_mapping("gpu-8") is False, "nothing left to remove"
    assert handler.get_job_id_for_worker("gpu-8") is None
    with other_handler(database_url) as other:
        assert other.get_job_id_for_worker("gpu-8") is None, "removed for every process"
    assert handler.process_remote_worker_progress("gpu-8", 10.0) is False


def test_mappings_are_removed_when_the_job_completes(
    store: JobStore, handler: ProgressHandler
) -> None:
    handler.register_job_mapping("gpu-9", "finishing")
    handler.register_task_mapping("task-9", "finishing")
    handler.register_job_mapping("gpu-10", "other-job")
    handler.handle_job_completion("finishing", True)
    assert MappingStore(store).items() == {("worker", "gpu-10"): "other-job"}, (
        "the ended job's worker and task mappings are gone, others stay"
    )
    assert handler.get_job_id_for_worker("gpu-9") is None
    assert handler.process_remote_worker_progress("gpu-9", 50.0) is False


def test_a_task_mapping_routes_celery_progress_and_log_lines(
    store: JobStore, handler: ProgressHandler
) -> None:
    handler.register_task_mapping("celery-abc", "routed")
    assert handler.process_celery_task_progress("celery-abc", 30.0, "callback")
    assert handler.process_log_line('{"event": "Processing... 35%", "task_id": "celery-abc"}')
    handler.flush()
    assert store.require_job("routed").percentage == 35.0
    assert store.get_job("celery-abc") is None, "no job is made up for a mapped task"


def test_celery_progress_without_a_mapping_goes_to_the_job_named_by_the_task_id(
    store: JobStore, handler: ProgressHandler
) -> None:
    assert handler.process_celery_task_progress("task-as-job", 50.0, "Celery", user_id="u1")
    handler.flush()
    job = store.get_job("task-as-job")
    assert job is not None, "the task id is the job id"
    assert (job.percentage, job.user_id) == (50.0, "u1")


def test_progress_from_an_unmapped_worker_is_refused_and_counted(
    store: JobStore, handler: ProgressHandler
) -> None:
    assert handler.process_remote_worker_progress("nobody", 25.0, "Remote") is False
    assert handler.process_log_line("Processing... 25%", worker_id="nobody") is False
    assert handler.process_log_line("Processing... 25%") is False, "a line naming no job"
    assert handler.stats.outcomes["no_job"] == 3
    handler.flush()
    assert store.list_jobs() == [], "nothing was created"


def test_without_auto_create_no_job_is_ever_created(store: JobStore) -> None:
    with closing(ProgressHandler(store=store, interval=0.5, auto_create_jobs=False)) as handler:
        handler.process_log_line("Processing... 10%", job_id="ghost-1")
        handler.process_log_line('{"event": "Processing... 20%", "job_id": "ghost-2"}')
        handler.process_celery_task_progress("ghost-3", 30.0, user_id="u1")
        handler.apply(ProgressEvent(percent=40.0), "ghost-4", immediate=True)
        handler.flush()
        assert store.list_jobs() == [], "auto_create_jobs=False never creates a job"
        assert handler.stats.outcomes["no_job"] == 4, f"each was counted: {handler.stats}"


# -- listeners ---------------------------------------------------------------------------


def test_listeners_hear_each_update_and_how_the_job_ended(
    store: JobStore, handler: ProgressHandler
) -> None:
    heard: list[tuple[str, str, JobStatus, float]] = []
    handler.add_listener(lambda kind, job: heard.append((kind, job.id, job.status, job.percentage)))
    for job_id in ("l-ok", "l-bad", "l-stop"):
        store.create_job(job_id=job_id)
        handler.apply(ProgressEvent(percent=20.0), job_id)
        handler.flush()
    handler.handle_job_completion("l-ok", True)
    handler.handle_job_error("l-bad", "broken")
    handler.handle_job_cancellation("l-stop")
    assert heard == [
        ("updated", "l-ok", JobStatus.PROCESSING, 20.0),
        ("updated", "l-bad", JobStatus.PROCESSING, 20.0),
        ("updated", "l-stop", JobStatus.PROCESSING, 20.0),
        ("completed", "l-ok", JobStatus.FINISHED, 100.0),
        ("failed", "l-bad", JobStatus.FAILED, 20.0),
        ("cancelled", "l-stop", JobStatus.CANCELLED, 20.0),
    ]


def test_a_failing_listener_is_logged_and_isolated(
    store: JobStore, handler: ProgressHandler
) -> None:
    heard: list[str] = []

    def broken(kind: str, job: Job) -> None:
        raise RuntimeError("webhook down")

    handler.add_listener(broken)
    handler.add_listener(lambda kind, job: heard.append(kind))
    store.create_job(job_id="isolated")
    with capture_logs() as logs:
        assert handler.apply(ProgressEvent(percent=10.0), "isolated")
        handler.flush()
        assert handler.handle_job_completion("isolated", True) is True
    assert heard == ["updated", "completed"], "the other listener still hears everything"
    assert store.require_job("isolated").status is JobStatus.FINISHED
    assert handler.stats.listener_errors >= 2, "each failure is counted"
    failures = [e for e in logs if e["log_level"] == "error" and "listener" in e["event"]]
    assert failures, f"the failure is logged; logged: {logs}"


def test_a_removed_listener_hears_nothing_more(store: JobStore, handler: ProgressHandler) -> None:
    heard: list[str] = []

    def listener(kind: str, job: Job) -> None:
        heard.append(kind)

    handler.add_listener(listener)
    store.create_job(job_id="removed")
    handler.apply(ProgressEvent(percent=10.0), "removed")
    handler.flush()
    handler.remove_listener(listener)
    handler.handle_job_completion("removed", True)
    assert heard == ["updated"], "after remove_listener the completion was not heard"


# -- the seed's API on the seed's examples (seed 004) -----------------------------------


def test_seed_example_1_remote_worker_progress(store: JobStore, handler: ProgressHandler) -> None:
    worker_id, job_id = "remote-worker-gpu-01", "job-audio-123"
    handler.register_job_mapping(worker_id, job_id)
    assert handler.get_job_id_for_worker(worker_id) == job_id
    progress_updates = [
        (10, "Initializing audio processing"),
        (52, "Extracting audio metadata"),
        (75, "Transcribing audio content"),
        (100, "Audio processing completed"),
    ]
    for percentage, message in progress_updates:
        assert handler.process_remote_worker_progress(worker_id, percentage, message)
    handler.flush()
    job = store.require_job(job_id)
    assert (job.percentage, job.summary) == (100.0, "Audio processing completed")
    assert job.status is JobStatus.PROCESSING, "100% alone does not finish (the seed did)"

    assert handler.handle_job_completion(job_id, True, "Processing completed") is True
    job = store.require_job(job_id)
    assert (job.status, job.percentage, job.summary) == (
        JobStatus.FINISHED,
        100.0,
        "Processing completed",
    )
    written = [e.percentage for e in progress_history(store, job_id)]
    assert written and set(written) <= {10.0, 52.0, 75.0, 100.0} and written[-1] == 100.0
    assert handler.get_job_id_for_worker(worker_id) is None, "the mapping ends with the job"


SEED_VIDEO_LINES = [
    '{"event": "Processing progress: Video processing (30%)", '
    '"timestamp": "2025-06-11T11:26:51.780725Z"}',
    '{"event": "Processing progress: Video processing (60%)", '
    '"timestamp": "2025-06-11T11:26:52.780725Z"}',
    '{"event": "Processing progress: Video processing (100%)", '
    '"timestamp": "2025-06-11T11:26:54.780725Z"}',
]


def test_seed_example_2_json_log_lines(store: JobStore, handler: ProgressHandler) -> None:
    for line in SEED_VIDEO_LINES:
        assert handler.process_log_line(line, job_id="job-video-456"), line
    handler.flush()
    job = store.require_job("job-video-456")
    assert (job.percentage, job.summary) == (100.0, "Video processing")
    assert job.status is JobStatus.PROCESSING
    assert job.last_event_at == datetime(2025, 6, 11, 11, 26, 54, 780725, tzinfo=UTC), (
        "the line's own timestamp orders the events"
    )


def test_seed_example_3_mixed_sources(store: JobStore, handler: ProgressHandler) -> None:
    assert handler.process_remote_worker_progress("remote-worker-1", 25, "Remote processing") is (
        False
    ), "no job is mapped to remote-worker-1"
    assert handler.process_celery_task_progress("celery-task-1", 50, "Celery processing")
    log_line = '{"event": "Processing progress: Direct processing (75%)"}'
    assert handler.process_log_line(log_line, job_id="direct-job-1")
    handler.flush()
    celery = store.require_job("celery-task-1")
    direct = store.require_job("direct-job-1")
    assert (celery.percentage, celery.summary) == (50.0, "Celery processing")
    assert (direct.percentage, direct.summary) == (75.0, "Direct processing")
    assert store.count_jobs() == 2


def test_process_log_lines_returns_how_many_were_applied(
    store: JobStore, handler: ProgressHandler
) -> None:
    lines = [
        "starting up",
        *SEED_VIDEO_LINES,
        '{"event": "connected to broker"}',
        "",
    ]
    assert handler.process_log_lines(lines, job_id="lines-job") == 3
    handler.flush()
    assert store.require_job("lines-job").percentage == 100.0
    assert handler.process_log_lines(["nothing", "here"], job_id="lines-job") == 0


def test_sync_job_with_logs_applies_the_latest_progress_now(
    store: JobStore, handler: ProgressHandler
) -> None:
    store.create_job(job_id="synced")
    shuffled = [SEED_VIDEO_LINES[1], SEED_VIDEO_LINES[2], SEED_VIDEO_LINES[0]]
    partial = [line.replace("(100%)", "(90%)") for line in shuffled]
    assert handler.sync_job_with_logs("synced", partial) is True
    job = store.require_job("synced")  # no flush: sync writes at once
    assert job.percentage == 90.0, "the line with the latest timestamp, wherever it stands"
    assert handler.sync_job_with_logs("synced", ["no progress here"]) is False


# -- many processes, one job -------------------------------------------------------------


def test_many_processes_with_their_own_handlers_end_the_job_once(database_url: str) -> None:
    with JobStore(database_url, create_tables=True) as store:
        job_id = store.create_job(name="contended").id

    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WORKERS)
    results = context.Queue()
    processes = [
        context.Process(
            target=report_progress_in_process, args=(database_url, job_id, w, start, results)
        )
        for w in range(WORKERS)
    ]
    for process in processes:
        process.start()
    reports: list[WorkerReport] = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    errors = {r.worker: r.error for r in reports if r.error}
    assert not errors, f"every process runs without an error: {errors}"
    by_worker = {r.worker: r for r in reports}
    assert by_worker[COMPLETER].completed is True, "the completion was written"
    locked = [line for r in reports for line in r.log_lines if "locked" in line]
    assert not locked, f"no 'database is locked': {locked[:3]}"
    assert all(r.stats["write_errors"] == 0 for r in reports), [r.stats for r in reports]

    with JobStore(database_url) as store:
        job = store.require_job(job_id)
        history = store.history(job_id)
    assert (job.status, job.percentage, job.summary) == (JobStatus.FINISHED, 100.0, "done"), (
        "FINISHED at 100% and nothing after the completion changed the row's state"
    )
    kinds = [event.kind for event in history]
    assert kinds.count("completion") == 1 and kinds[-1] == "completion", (
        f"one completion, and no progress written after it: {kinds}"
    )
    percents = [event.percentage for event in history[:-1]]
    assert percents == sorted(percents), "the percentage never went down"
    late = sum(r.stats.get("terminal", 0) for r in reports)
    assert late > 0, "events sent after the completion met an ended job and were counted"
    writers = {event.message.split()[1] for event in history[:-1] if event.message}
    assert len(writers) >= 2, f"progress from several processes landed, got only {writers}"
    assert sum(r.accepted for r in reports) <= EVENTS_PER_WORKER * WORKERS


def test_a_timestamp_from_the_future_does_not_freeze_the_job(
    handler: ProgressHandler, store: JobStore
) -> None:
    """A remote clock an hour fast (or a year 2999 in a JSON log) is taken as now."""
    store.create_job(job_id="future")
    ahead = datetime.now(UTC) + timedelta(hours=1)
    first = handler.apply(ProgressEvent(percent=10.0, timestamp=ahead), "future", immediate=True)
    far = datetime(2999, 1, 1, tzinfo=UTC)
    second = handler.apply(ProgressEvent(percent=20.0, timestamp=far), "future", immediate=True)
    later = handler.apply(ProgressEvent(percent=30.0), "future", immediate=True)
    assert [r.reason for r in (first, second, later)] == ["applied"] * 3
    job = store.require_job("future")
    assert job.percentage == 30.0, "a report with a true clock still moves the job"
    assert job.last_event_at is not None and job.last_event_at <= datetime.now(UTC)
    assert handler.stats.future_timestamps == 2


def test_timestamps_are_compared_only_within_one_clock(
    handler: ProgressHandler, store: JobStore
) -> None:
    """A remote worker whose clock is 10 min slow is not stale against the log tap's
    true-time events; against its own earlier reports it still is."""
    store.create_job(job_id="clocks")
    now = datetime.now(UTC)
    slow = now - timedelta(minutes=10)

    def apply(event: ProgressEvent) -> str:
        return handler.apply(event, "clocks", immediate=True).reason

    assert apply(ProgressEvent(percent=10.0, timestamp=now, source="log")) == "applied"
    assert apply(ProgressEvent(percent=20.0, timestamp=slow, source="remote",
                               worker_id="gpu-01")) == "applied", "another clock: not stale"
    assert apply(ProgressEvent(percent=25.0, timestamp=slow - timedelta(seconds=1),
                               source="remote", worker_id="gpu-01")) == "stale", (
        "older than the same worker's last report")
    assert apply(ProgressEvent(percent=30.0, timestamp=slow, source="remote",
                               worker_id="gpu-02")) == "applied", "each worker its own clock"
    job = store.require_job("clocks")
    assert job.percentage == 30.0 and job.last_event_clock == "remote:gpu-02"


def test_per_job_state_ends_with_the_job(handler: ProgressHandler, store: JobStore) -> None:
    """5,000 jobs run and end: the writer keeps no clock for any of them, and the handler
    remembers ended jobs only for a while."""
    for i in range(5_000):
        job_id = f"done-{i}"
        store.create_job(job_id=job_id)
        handler.apply(ProgressEvent(percent=50.0), job_id)
        handler.handle_job_completion(job_id, True, "done")
    handler.flush()
    writer = handler._writer  # private state: its size is the point here
    assert len(writer._clocks) == 0, f"{len(writer._clocks)} clocks of ended jobs kept"
    ended = handler._terminal
    assert len(ended) == 5_000, "ended jobs are remembered a while: late events cost no query"
    first = next(iter(ended))
    ended[first] = (0.0, ended[first][1])  # as if its time had passed
    handler.apply(ProgressEvent(percent=1.0), "done-0")  # a late event on an ended job
    store.create_job(job_id="one-more")
    handler.handle_job_completion("one-more", True, "done")
    assert first not in ended, "an ended job is forgotten once its time has passed"


def test_task_lookups_are_not_kept_forever(handler: ProgressHandler, store: JobStore) -> None:
    """Plain .delay() tasks each ask for their job: the cache of answers stays bounded,
    and a task's entry goes when its job ends."""
    for i in range(MAPPING_CACHE_MAX + 200):
        handler.apply(ProgressEvent(percent=1.0, task_id=f"plain-{i}"))
    cached = handler.mappings._cache  # the mappings' private cache: its size is the point here
    assert len(cached) <= MAPPING_CACHE_MAX, f"{len(cached)} lookups kept"
    store.create_job(job_id="plain-done")
    handler.apply(ProgressEvent(percent=5.0, task_id="plain-done"))
    assert ("task", "plain-done") in cached
    handler.handle_job_completion("plain-done", True, "done")
    assert ("task", "plain-done") not in cached, "an ended task's lookup is forgotten"
