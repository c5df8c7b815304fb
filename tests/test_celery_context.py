"""Progress from inside a job, without a worker: ``job_context`` around plain code.

``report_progress``, ``progress_callback``, ``stage``, the log tap and
``run_with_progress`` only update the job's in-memory state; the runtime writes it.
These tests use a runtime whose flusher waits 30 s, so nothing reaches the job table
(PostgreSQL) until a test calls ``runtime.flush()``: what they assert is exactly what
the calls reported.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from morag_jobs import InvalidProgress, NoJobContext
from morag_jobs.celery import (
    CommandFailed,
    LogTap,
    Runtime,
    RuntimeConfig,
    get_current_job_id,
    job_context,
    progress_callback,
    progress_processor,
    report_progress,
    run_with_progress,
    stage,
)
from morag_jobs.store import Job, JobStatus, JobStore
from tests.celery_app import AUDIO, AUDIO_PLAN, PACKS, describe, fresh_postgres_schema, history

pytestmark = pytest.mark.postgres

TQDM_LIKE = """\
import sys, time
for done in range(1, 6):
    bar = "#" * done * 2
    sys.stderr.write(f"\\r{done * 20:3d}%|{bar:<10}| {done}/5 [00:0{done}<00:00, 1.00it/s]")
    sys.stderr.flush()
    time.sleep(0.12)
sys.stderr.write("\\n")
print("done")
"""


@pytest.fixture(scope="module")
def job_db(postgres_url: str) -> str:
    return fresh_postgres_schema(postgres_url)


@pytest.fixture(scope="module")
def store(job_db: str) -> Iterator[JobStore]:
    with JobStore(job_db) as job_store:
        yield job_store


@pytest.fixture
def runtime(job_db: str) -> Iterator[Runtime]:
    """Writes only when told to (``flush``): its interval outlasts every test."""
    slow = Runtime(RuntimeConfig(database_url=job_db, interval=30.0, celery_progress=False))
    yield slow
    slow.close()


@pytest.fixture
def fast_runtime(job_db: str) -> Iterator[Runtime]:
    """Writes on its own every 50 ms, as a worker does."""
    fast = Runtime(RuntimeConfig(database_url=job_db, interval=0.05, celery_progress=False))
    yield fast
    fast.close()


@pytest.fixture
def job(store: JobStore) -> Job:
    return store.create_job(name="plain", job_type="plain")


@pytest.fixture
def audio_job(store: JobStore) -> Job:
    return store.create_job(name="talk.mp3", job_type=AUDIO, stages=AUDIO_PLAN)


@pytest.fixture
def tapped_logger() -> Iterator[logging.Logger]:
    """A logger with only the log tap on it, at INFO."""
    logger = logging.getLogger("tests.context.tapped")
    tap = LogTap()
    logger.addHandler(tap)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    logger.removeHandler(tap)


def written(runtime: Runtime, store: JobStore, job_id: str) -> Job:
    """The job as stored once everything reported so far is written."""
    runtime.flush()
    return store.require_job(job_id)


# -- outside a job --------------------------------------------------------------------------


def test_report_progress_outside_a_job_raises_no_job_context_saying_where_it_works() -> None:
    with pytest.raises(NoJobContext, match=r"inside a Celery task .*install\(app\).*job_context"):
        report_progress(10)


def test_no_job_context_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError):
        report_progress(message="anyone there?")


@pytest.mark.parametrize("call", [
    lambda: progress_callback(stage="processing"),
    lambda: stage("download").__enter__(),
    lambda: run_with_progress([sys.executable, "-c", "pass"]),
], ids=["progress_callback", "stage", "run_with_progress"])
def test_every_progress_helper_refuses_to_run_outside_a_job(call: object) -> None:
    with pytest.raises(NoJobContext):
        call()  # type: ignore[operator]


def test_get_current_job_id_is_none_outside_a_job_and_the_job_id_inside(
    runtime: Runtime, job: Job
) -> None:
    assert get_current_job_id() is None
    with job_context(job.id, runtime=runtime):
        assert get_current_job_id() == job.id
    assert get_current_job_id() is None, "expected the context to end with the block"


def test_closing_a_runtime_closes_its_database_connections(job_db: str, job: Job) -> None:
    """A worker process shutting down (or a script done with job_context) leaks nothing."""
    runtime = Runtime(RuntimeConfig(database_url=job_db, interval=30.0, celery_progress=False))
    with job_context(job.id, runtime=runtime):
        report_progress(10)
    runtime.close()
    store = runtime.handler.store
    try:
        assert store.engine.pool.checkedin() == 0, (
            "expected Runtime.close() to close the connections of the store it built")
    finally:
        store.close()


# -- report_progress ------------------------------------------------------------------------


def test_report_progress_stays_in_memory_until_the_runtime_writes_it(
    runtime: Runtime, store: JobStore, job: Job
) -> None:
    with job_context(job.id, runtime=runtime):
        report_progress(30, message="reading")
        assert store.require_job(job.id).percentage == 0.0, (
            "expected report_progress to write nothing by itself")
        stored = written(runtime, store, job.id)
    assert (stored.status, stored.percentage, stored.summary) == (
        JobStatus.PROCESSING, 30.0, "reading")


def test_many_reports_between_writes_coalesce_into_the_latest(
    runtime: Runtime, store: JobStore, job: Job
) -> None:
    with job_context(job.id, runtime=runtime):
        for percent in range(1, 1001):
            report_progress(percent / 20)
        assert written(runtime, store, job.id).percentage == 50.0
    assert len(history(store, job.id, "progress")) == 1, "expected one write for 1,000 calls"


def test_report_progress_with_current_and_total(
    runtime: Runtime, store: JobStore, job: Job
) -> None:
    with job_context(job.id, runtime=runtime):
        report_progress(current=3, total=12, message="pages")
        stored = written(runtime, store, job.id)
    assert (stored.percentage, stored.current, stored.total, stored.summary) == (
        25.0, 3, 12, "pages")


def test_a_message_only_report_keeps_the_percentage(
    runtime: Runtime, store: JobStore, job: Job
) -> None:
    with job_context(job.id, runtime=runtime):
        report_progress(60)
        written(runtime, store, job.id)
        report_progress(message="still going")
        stored = written(runtime, store, job.id)
    assert (stored.percentage, stored.summary) == (60.0, "still going")


@pytest.mark.parametrize("value", [math.nan, math.inf, -1, "50", True])
def test_report_progress_refuses_what_is_not_a_finite_non_negative_number(
    value: object, runtime: Runtime, job: Job
) -> None:
    with job_context(job.id, runtime=runtime), pytest.raises(InvalidProgress):
        report_progress(value)  # type: ignore[arg-type]


def test_a_percentage_reported_for_a_stage_is_relative_to_its_band(
    runtime: Runtime, store: JobStore, audio_job: Job
) -> None:
    with job_context(audio_job.id, runtime=runtime):
        report_progress(50, stage="indexing")
        stored = written(runtime, store, audio_job.id)
    assert (stored.stage, stored.stage_percent, stored.percentage) == ("indexing", 50.0, 85.0)


# -- progress_callback ----------------------------------------------------------------------


def test_progress_callback_maps_a_fraction_onto_the_stage_band(
    runtime: Runtime, store: JobStore, audio_job: Job
) -> None:
    with job_context(audio_job.id, runtime=runtime):
        on_progress = progress_callback(stage="processing")
        on_progress(0.5, "half the segments")
        stored = written(runtime, store, audio_job.id)
    assert stored.percentage == 40.0, (
        f"expected processing (10..70) at 0.5 to be 40% overall, got {stored.percentage}")
    assert (stored.stage, stored.summary) == ("processing", "half the segments")


def test_progress_callback_works_from_a_thread_the_task_starts(
    runtime: Runtime, store: JobStore, job: Job
) -> None:
    errors: list[BaseException] = []
    with job_context(job.id, runtime=runtime):
        on_progress = progress_callback()

        def library_code() -> None:
            try:
                on_progress(0.25)
            except BaseException as error:  # reported below, in the test's thread
                errors.append(error)

        thread = threading.Thread(target=library_code)
        thread.start()
        thread.join(5)
        stored = written(runtime, store, job.id)
    assert errors == [], f"expected the callback to work in another thread: {errors}"
    assert stored.percentage == 25.0


def test_progress_callback_refuses_a_negative_fraction(runtime: Runtime, job: Job) -> None:
    with job_context(job.id, runtime=runtime):
        on_progress = progress_callback()
        with pytest.raises(InvalidProgress, match="finite fraction"):
            on_progress(-0.1)


# -- stage blocks ---------------------------------------------------------------------------


def test_stage_blocks_nest_and_children_fill_their_parents_steps(
    runtime: Runtime, store: JobStore, audio_job: Job
) -> None:
    seen: list[float] = []

    def note() -> None:
        seen.append(written(runtime, store, audio_job.id).percentage)

    with job_context(audio_job.id, runtime=runtime):
        with stage("download"):
            pass
        note()  # download done: 10
        with stage("processing", total=4) as processing:
            processing.increment(message="chunk 1")
            note()  # 1 of 4 steps: 10 + 15 = 25
            with stage("chunk 2") as chunk:
                chunk.update(percent=50)
                note()  # 1.5 of 4: 32.5
            note()  # the child's end counts its step: 2 of 4 = 40
        note()  # processing done: 70
    assert seen == [10.0, 25.0, 32.5, 40.0, 70.0], seen


def test_finishing_one_stage_block_of_a_job_without_a_plan_does_not_claim_the_job_done(
    runtime: Runtime, store: JobStore, job: Job
) -> None:
    """Without a plan there is no band for the stage: its 100% is not the job's 100%."""
    with job_context(job.id, runtime=runtime):
        with stage("download"):
            pass
        stored = written(runtime, store, job.id)
        with stage("processing", total=4) as processing:
            processing.increment()
    assert stored.percentage < 100.0, (
        f"expected a job without a stage plan to stay below 100% after its first stage block "
        f"(two more follow), got {stored.percentage}% ({stored.stage})")


def test_an_exception_inside_a_stage_fails_the_job_and_propagates(
    runtime: Runtime, store: JobStore, audio_job: Job
) -> None:
    with (
        job_context(audio_job.id, runtime=runtime),
        pytest.raises(ValueError, match="bad frame"),
        stage("processing", total=2),
        stage("chunk 1") as chunk,
    ):
        chunk.update(percent=50)
        raise ValueError("bad frame")
    stored = store.require_job(audio_job.id)
    assert stored.status is JobStatus.FAILED, f"expected FAILED at once, got {stored.status}"
    assert stored.error == "stage processing/chunk 1 failed: ValueError: bad frame"
    assert stored.percentage == 25.0, "expected 0.5 of 2 steps of processing (25%) to be kept"


# -- the log tap ----------------------------------------------------------------------------


def test_the_log_tap_moves_the_job_with_a_logged_progress_line(
    runtime: Runtime, store: JobStore, job: Job, tapped_logger: logging.Logger
) -> None:
    with job_context(job.id, runtime=runtime):
        tapped_logger.info("Processing... %d%%", 75)
        stored = written(runtime, store, job.id)
    assert (stored.percentage, stored.summary) == (75.0, "Processing...")


def test_the_log_tap_reads_a_tasks_lines_as_one_stream(
    runtime: Runtime, store: JobStore, job: Job, tapped_logger: logging.Logger
) -> None:
    """scikit-learn's total comes on one line and its fits on the lines after it."""
    with job_context(job.id, runtime=runtime):
        tapped_logger.info("Fitting 5 folds for each of 2 candidates, totalling 10 fits")
        for fold in range(1, 6):
            tapped_logger.info("[CV %d/5] END ....C=1;, score=0.967 total time=   0.0s", fold)
        stored = written(runtime, store, job.id)
    assert stored.percentage == 50.0, "5 of 10 fits, not the fold index 5/5"


@pytest.mark.parametrize("line", ["CPU usage 95%", "disk 80% full", "loaded 3 models"])
def test_the_log_tap_ignores_lines_the_parser_rejects(
    line: str, runtime: Runtime, store: JobStore, job: Job, tapped_logger: logging.Logger
) -> None:
    with job_context(job.id, runtime=runtime):
        tapped_logger.info(line)
        stored = written(runtime, store, job.id)
    assert stored.percentage == 0.0 and history(store, job.id, "progress") == [], (
        f"expected {line!r} not to move the job")


def test_the_log_tap_does_nothing_outside_a_job(tapped_logger: logging.Logger) -> None:
    tapped_logger.info("Processing... 75%")  # no job: must neither fail nor report


def test_the_log_tap_never_parses_morag_jobs_own_log_lines(
    runtime: Runtime, store: JobStore, job: Job
) -> None:
    own = logging.getLogger("morag_jobs.celery.test")
    tap = LogTap()
    own.addHandler(tap)
    try:
        with job_context(job.id, runtime=runtime):
            own.warning("Processing... 75%")
            stored = written(runtime, store, job.id)
    finally:
        own.removeHandler(tap)
    assert stored.percentage == 0.0, "expected the tap to skip morag_jobs' own records"


def test_the_structlog_processor_moves_the_job_and_returns_the_event_unchanged(
    runtime: Runtime, store: JobStore, job: Job
) -> None:
    fields = {"event": "embedding chunks", "progress": 0.6}
    with job_context(job.id, runtime=runtime):
        returned = progress_processor(None, "info", dict(fields))
        stored = written(runtime, store, job.id)
    assert returned == fields
    assert stored.percentage == 60.0


def test_the_structlog_processor_reads_with_the_runtimes_pattern_packs(
    job_db: str, store: JobStore, job: Job
) -> None:
    """One parser per runtime, built with its ``pattern_dirs``: the processor uses it too."""
    packed = Runtime(RuntimeConfig(database_url=job_db, interval=30.0, celery_progress=False,
                                   pattern_dirs=(PACKS,)))
    try:
        with job_context(job.id, runtime=packed):
            progress_processor(None, "info", {"event": "cooked 3 pies of 4"})
            stored = written(packed, store, job.id)
    finally:
        packed.close()
    assert stored.percentage == 75.0, (
        "expected 'cooked 3 pies of 4' read by tests/packs/bakery.toml as 75%")


# -- run_with_progress ----------------------------------------------------------------------


def test_run_with_progress_reads_carriage_return_updates_as_they_stream(
    fast_runtime: Runtime, store: JobStore, job: Job
) -> None:
    with job_context(job.id, runtime=fast_runtime):
        done = run_with_progress([sys.executable, "-c", TQDM_LIKE], timeout=20)
        fast_runtime.flush()
    progress = [e.percentage for e in history(store, job.id, "progress")]
    assert done.returncode == 0 and done.stdout.strip() == "done"
    assert "\r" in done.stderr, "expected the command's output returned as it was printed"
    assert len(progress) >= 3 and progress == sorted(progress), (
        f"expected several updates written while the command ran: {progress}")
    assert progress[-1] == 100.0, describe(history(store, job.id))


def test_run_with_progress_maps_the_commands_progress_onto_a_stage(
    runtime: Runtime, store: JobStore, audio_job: Job
) -> None:
    script = "print('Step 3/4', flush=True)"
    with job_context(audio_job.id, runtime=runtime):
        run_with_progress([sys.executable, "-c", script], stage="processing", timeout=20)
        stored = written(runtime, store, audio_job.id)
    assert (stored.stage, stored.percentage) == ("processing", 55.0), (
        f"expected 'Step 3/4' in processing to be 55% overall, got {stored.percentage}")


def test_a_failing_command_raises_command_failed_with_the_tail_of_stderr(
    runtime: Runtime, job: Job
) -> None:
    script = (
        "import sys\n"
        "for n in range(5000): sys.stderr.write(f'noise line {n}\\n')\n"
        "sys.stderr.write('error: model file is truncated\\n')\n"
        "sys.exit(3)\n"
    )
    with job_context(job.id, runtime=runtime), pytest.raises(CommandFailed) as raised:
        run_with_progress([sys.executable, "-c", script], timeout=20)
    message = str(raised.value)
    assert raised.value.returncode == 3
    assert message.rstrip().endswith("error: model file is truncated"), message[-200:]
    assert "noise line 0\n" not in message and len(message) < 6000, (
        "expected only the tail of a long stderr in the message")
    assert isinstance(raised.value, subprocess.CalledProcessError)


def test_a_failing_command_with_check_false_returns_its_exit_status(
    runtime: Runtime, job: Job
) -> None:
    with job_context(job.id, runtime=runtime):
        done = run_with_progress([sys.executable, "-c", "raise SystemExit(4)"], check=False,
                                 timeout=20)
    assert done.returncode == 4


def test_a_command_that_outlives_its_timeout_is_killed(runtime: Runtime, job: Job) -> None:
    started = time.monotonic()
    with job_context(job.id, runtime=runtime), pytest.raises(subprocess.TimeoutExpired):
        run_with_progress([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert time.monotonic() - started < 10, "expected the command killed at its timeout"
