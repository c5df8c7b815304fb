"""Real tools' output (``fixtures/logs/real/``) against the tools' own numbers.

The captures were made by running the tools here (``fixtures/logs/real/capture/``) and
their truth files were written from what the tools printed, never from this parser. The
scorer is ``bench/score_real.py``; these tests hold the parser to its thresholds and
replay every capture through ``run_with_progress`` and ``morag-jobs tail`` end to end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_jobs import ProgressEventParser
from morag_jobs.celery import Runtime, RuntimeConfig, job_context, run_with_progress
from morag_jobs.follow import LogFollower
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStore

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from score_real import (  # noqa: E402 - the scorer lives with the benchmarks
    Capture,
    Score,
    captures,
    score_all,
    summary,
)

# Captures whose final figure no reader of the output alone can know, with the reason.
# Each is still read without a single false event; a caller who knows more passes it.
UNREACHABLE = {
    "pv-numeric-piped": "pv -n prints bare numbers, one per line: nothing says they are "
                        "percents, and reading every bare number as one would flood jobs",
    "zstd-progress-piped": "zstd's '=> 40.01%' is the compression ratio; the progress is "
                           "bytes consumed of an input size it never prints",
    "zstd-default-tty": "as zstd-progress-piped: the only percent on the line is the ratio",
    "tar-checkpoint-piped": "'Write checkpoint N' counts records of an archive whose size "
                            "tar never prints",
    "docs-lightning-validation-nested": "a docs excerpt that starts inside the nested "
                                        "validation bar: the first bar seen is the inner one",
}
SCORES = score_all()
CAPTURES = {capture.name: capture for capture in captures()}


def _scores(mode: str) -> list[Score]:
    return [score for score in SCORES if score.mode == mode]


def test_the_corpus_is_real_and_large() -> None:
    progress = [c for c in CAPTURES.values() if c.truth.get("kind") == "progress"]
    tools = {c.truth["tool"] for c in progress}
    assert len(progress) >= 70 and len(tools) >= 25, (
        f"expected the real-tools corpus in fixtures/logs/real, found {len(progress)} "
        f"progress captures of {len(tools)} tools")
    assert sum(c.truth.get("kind") == "non-progress" for c in CAPTURES.values()) >= 30


@pytest.mark.parametrize("mode", ["lines", "chunk", "stream"])
def test_at_least_95_percent_of_the_updates_a_line_states_are_recovered(mode: str) -> None:
    result = summary(SCORES, mode)
    assert result["explicit_rate"] >= 0.95, (
        f"{mode}: {result['explicit_recovered']}/{result['explicit_updates']} updates whose "
        "line carries a percent or n/N were recovered with the right percent")


@pytest.mark.parametrize("mode", ["lines", "chunk", "stream"])
def test_no_false_progress_on_output_that_prints_numbers_which_are_not_progress(
    mode: str,
) -> None:
    wrong = {s.name: s.misses[:3] for s in _scores(mode)
             if CAPTURES[s.name].truth.get("kind") == "non-progress" and s.false_positives}
    assert not wrong, f"{mode}: events read from output that is not progress: {wrong}"


def test_the_stream_claims_nothing_a_tool_did_not_draw() -> None:
    wrong = {s.name: s.misses[:3] for s in _scores("stream") if s.false_positives}
    assert not wrong, f"events where the tool drew no such figure: {wrong}"


def test_parse_chunk_finds_exactly_what_parse_line_finds_on_every_capture() -> None:
    differ = {s.name: s.misses for s in _scores("chunk") if s.wrong}
    assert not differ, differ


def test_the_final_percent_is_right_on_every_capture_that_states_it() -> None:
    wrong = {s.name: (s.final_expected, s.final_got) for s in _scores("stream")
             if not s.final_right and s.name not in UNREACHABLE}
    assert not wrong, f"final percent (expected, got) differs: {wrong}"


def test_the_unreachable_list_is_still_true() -> None:
    """If one of them starts working, it leaves the list (and this file stays honest)."""
    now_right = [s.name for s in _scores("stream") if s.name in UNREACHABLE and s.final_right]
    assert not now_right, f"these captures now end right; remove them from UNREACHABLE: {now_right}"


# -- end to end: the job moves to where the tool said ----------------------------------------


def _e2e_cases() -> Iterator[object]:
    for name, capture in sorted(CAPTURES.items()):
        updates = capture.updates()
        if capture.truth.get("kind") != "progress" or not updates or name in UNREACHABLE:
            continue
        yield pytest.param(capture, id=name)


def _highest(capture: Capture) -> float:
    """A job's percent never goes down: it ends at the highest figure the tool drew."""
    return max(update["percent"] for update in capture.updates())


REPLAY = (
    "import os, random, sys\n"
    "data = open(sys.argv[1], 'rb').read()\n"
    "rng = random.Random(7)\n"
    "i = 0\n"
    "while i < len(data):\n"
    "    n = rng.randint(1, 4096)\n"
    "    os.write(1, data[i:i + n])\n"
    "    i += n\n"
)


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('real')}/jobs.db"


@pytest.fixture(scope="module")
def job_store(db_url: str) -> Iterator[JobStore]:
    with JobStore(db_url) as store:
        yield store


@pytest.fixture(scope="module")
def runtime(db_url: str, job_store: JobStore) -> Iterator[Runtime]:
    slow = Runtime(RuntimeConfig(database_url=db_url, interval=30.0, celery_progress=False))
    yield slow
    slow.close()


@pytest.mark.parametrize("capture", list(_e2e_cases()))
def test_run_with_progress_moves_the_job_to_the_tools_final_figure(
    capture: Capture, runtime: Runtime, job_store: JobStore, tmp_path: Path
) -> None:
    path = tmp_path / "capture.log"
    path.write_bytes(capture.data)
    job = job_store.create_job(name=capture.name, job_type="replay")
    with job_context(job.id, runtime=runtime):
        run_with_progress([sys.executable, "-c", REPLAY, str(path)], timeout=60,
                          total=capture.truth.get("caller_total"),
                          duration=capture.truth.get("caller_duration"))
        runtime.flush()
    stored = job_store.require_job(job.id).percentage
    assert stored == pytest.approx(_highest(capture), abs=1.0), (
        f"{capture.name}: the job ended at {stored}, the tool drew up to {_highest(capture)}")


@pytest.mark.parametrize("capture", list(_e2e_cases()))
def test_tail_moves_the_job_to_the_tools_final_figure(
    capture: Capture, job_store: JobStore, tmp_path: Path
) -> None:
    path = tmp_path / "capture.log"
    path.write_bytes(capture.data)
    job = job_store.create_job(name=capture.name, job_type="tail")
    handler = ProgressHandler(store=job_store, interval=30.0, auto_create_jobs=False)
    try:
        with LogFollower(path, handler=handler, job_id=job.id, from_start=True,
                         parser=ProgressEventParser(use_environment=False),
                         total=capture.truth.get("caller_total"),
                         duration=capture.truth.get("caller_duration")) as follower:
            follower.poll_once()
        handler.flush()
    finally:
        handler.close()
    stored = job_store.require_job(job.id).percentage
    assert stored == pytest.approx(_highest(capture), abs=1.0), (
        f"{capture.name}: the job ended at {stored}, the tool drew up to {_highest(capture)}")
