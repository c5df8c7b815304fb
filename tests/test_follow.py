"""``LogFollower``: log files followed like ``tail -F`` into the job table.

Real files written by a real writer thread, a real job table; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from morag_jobs.errors import MoragJobsError
from morag_jobs.follow import CheckpointError, FollowedEvent, LogFollower
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import JobStore
from tests.handler_helpers import progress_history

TASK_ID = "7d1e2f3a-4b5c-4d6e-8f90-a1b2c3d4e5f6"
OTHER_TASK_ID = "0f3c2a1e-8d4b-4c1a-9f2e-5a6b7c8d9e0f"
WAIT_SECONDS = 20.0


def line(i: int, total: int) -> str:
    """A progress line whose message names its number: i/total of the job."""
    return f"Processing file {i} of {total}\n"


def tqdm_update(i: int, total: int = 10) -> str:
    percent = i * 100 // total
    return f"\rTranscribing: {percent:3d}%|{'#' * i:<10}| {i}/{total} [00:01<00:02, 9.00it/s]"


def celery_line(task_id: str, text: str) -> str:
    return (f"[2026-11-22 12:00:00,000: INFO/ForkPoolWorker-1] "
            f"ingest.tasks.transcribe[{task_id}]: {text}\n")


def messages(followed: list[FollowedEvent]) -> list[str]:
    return [f.event.message for f in followed]


@pytest.fixture
def store(sqlite_url: str) -> Iterator[JobStore]:
    with JobStore(sqlite_url) as job_store:
        yield job_store


@pytest.fixture
def handler(store: JobStore) -> Iterator[ProgressHandler]:
    progress = ProgressHandler(store=store, interval=0.05, auto_create_jobs=False)
    yield progress
    progress.close()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


class LogWriter(threading.Thread):
    """Appends lines like a worker does, half-lines flushed mid-line, rotating on cue.

    ``rotations`` maps a line number to "rename" (logrotate's ``create``) or
    "copytruncate"; the writer rotates before writing that line.
    """

    def __init__(self, path: Path, lines: list[str], rotations: dict[int, str]) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.lines = lines
        self.rotations = rotations
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            file = self.path.open("ab", buffering=0)
            for number, text in enumerate(self.lines):
                kind = self.rotations.get(number)
                if kind is not None:
                    file = self._rotate(file, kind)
                data = text.encode()
                if number % 3 == 0:
                    file.write(data[:7])
                    time.sleep(0.002)
                    data = data[7:]
                file.write(data)
                if number % 4 == 0:
                    time.sleep(0.003)
            file.close()
        except BaseException as error:
            self.error = error

    def _rotate(self, file: object, kind: str) -> object:
        rotated = self.path.with_name(self.path.name + ".1")
        if rotated.exists():
            rotated.rename(self.path.with_name(self.path.name + ".2"))
        if kind == "rename":
            file.close()  # type: ignore[attr-defined]
            self.path.rename(rotated)
            return self.path.open("ab", buffering=0)
        shutil.copyfile(self.path, rotated)
        os.truncate(self.path, 0)
        return file


def follow_while_writing(follower: LogFollower, writer: LogWriter) -> list[FollowedEvent]:
    """Poll (one pass at a time) while the writer writes; every event seen, in order."""
    seen: list[FollowedEvent] = []
    deadline = time.monotonic() + WAIT_SECONDS
    writer.start()
    while writer.is_alive():
        seen.extend(follower.follow(max_seconds=0))
        assert time.monotonic() < deadline, "the writer did not finish in time"
        time.sleep(0.004)
    writer.join()
    assert writer.error is None, f"the writer failed: {writer.error!r}"
    seen.extend(follower.follow(max_seconds=0))
    return seen


class TestFollowing:
    def test_a_partial_line_waits_for_its_newline(
        self, store: JobStore, handler: ProgressHandler, log_path: Path
    ) -> None:
        store.create_job(job_id="job-1")
        log_path.write_bytes(b"")
        with LogFollower(log_path, handler=handler, job_id="job-1") as follower:
            with log_path.open("ab") as file:
                file.write(b"Processing file 1 o")
            assert follower.poll_once() == 0
            assert follower.stats.events == 0, "half a line must not be parsed"
            with log_path.open("ab") as file:
                file.write(b"f 4\n")
            assert follower.poll_once() == 1
        assert (follower.stats.events, follower.stats.applied) == (1, 1)
        assert store.require_job("job-1").percentage == 25.0

    def test_a_tqdm_bar_still_drawing_its_line_moves_the_job_live(
        self, store: JobStore, handler: ProgressHandler, log_path: Path
    ) -> None:
        """The updates before the last \\r are shown live; the line counts once, at its end."""
        store.create_job(job_id="job-1")
        log_path.write_bytes(b"")
        with LogFollower(log_path, handler=handler, job_id="job-1") as follower:
            with log_path.open("a") as file:
                file.write("".join(tqdm_update(i) for i in range(6)))
            follower.poll_once()
            assert store.require_job("job-1").percentage == 40.0, "the 4/10 update is complete"
            assert follower.stats.lines == 0
            with log_path.open("a") as file:
                file.write("".join(tqdm_update(i) for i in range(6, 11)) + "\n")
            assert follower.poll_once() == 1
        assert store.require_job("job-1").percentage == 100.0
        assert follower.stats.lines == 1

    def test_a_writer_appending_meanwhile_loses_and_repeats_no_line(
        self, store: JobStore, handler: ProgressHandler, log_path: Path
    ) -> None:
        store.create_job(job_id="job-1")
        log_path.write_bytes(b"")
        lines = [line(i, 120) for i in range(1, 121)]
        lines[60] = tqdm_update(3) + tqdm_update(7) + "\n"  # a finished bar, one line
        with LogFollower(log_path, handler=handler, job_id="job-1") as follower:
            seen = follow_while_writing(follower, LogWriter(log_path, lines, {}))
        expected = [text.strip() for text in lines]
        # Bound to one job, the file is one stream: a bar drawn while the job's own
        # "file N of 120" counter runs is an inner bar, counted and not followed.
        del expected[60]
        assert messages(seen) == expected
        assert follower.stats.lines == 120
        assert handler.stats.outcomes["applied"] == 119
        assert store.require_job("job-1").percentage == 100.0

    @pytest.mark.parametrize("kind", ["rename", "copytruncate"])
    def test_rotation_while_writing_loses_and_repeats_no_line(
        self, store: JobStore, handler: ProgressHandler, log_path: Path, kind: str
    ) -> None:
        store.create_job(job_id="job-1")
        log_path.write_bytes(b"")
        lines = [line(i, 150) for i in range(1, 151)]
        writer = LogWriter(log_path, lines, {50: kind, 100: kind})
        with LogFollower(log_path, handler=handler, job_id="job-1") as follower:
            seen = follow_while_writing(follower, writer)
        assert messages(seen) == [text.strip() for text in lines], "each line exactly once"
        assert follower.stats.rotations == 2
        assert follower.stats.truncations == (2 if kind == "copytruncate" else 0)
        assert handler.stats.outcomes["applied"] == 150
        assert store.require_job("job-1").percentage == 100.0

    def test_a_file_that_appears_later_is_read_from_its_start(
        self, store: JobStore, handler: ProgressHandler, tmp_path: Path
    ) -> None:
        store.create_job(job_id="job-1")
        present, later = tmp_path / "present.log", tmp_path / "later.log"
        present.write_text(line(1, 10) + line(2, 10))
        with LogFollower([present, later], handler=handler, job_id="job-1") as follower:
            assert follower.poll_once() == 0, "a file present at the start is read from its end"
            later.write_text(line(3, 10) + line(4, 10))
            with present.open("a") as file:
                file.write(line(5, 10))
            assert follower.poll_once() == 3
        assert follower.stats.applied == 3
        assert store.require_job("job-1").percentage == 50.0

    def test_reading_from_the_end_keeps_a_line_still_being_written_whole(
        self, log_path: Path
    ) -> None:
        log_path.write_text(line(1, 4) + "Processing fi")
        with LogFollower(log_path) as follower:
            with log_path.open("a") as file:
                file.write("le 2 of 4\n")
            seen = list(follower.follow(max_seconds=0))
        assert messages(seen) == ["Processing file 2 of 4"]

    def test_from_start_reads_what_is_already_there(self, log_path: Path) -> None:
        log_path.write_text(line(1, 4) + "noise\n" + line(2, 4))
        with LogFollower(log_path, from_start=True) as follower:
            seen = list(follower.follow(max_seconds=0))
        assert messages(seen) == ["Processing file 1 of 4", "Processing file 2 of 4"]
        assert (follower.stats.lines, follower.stats.events) == (3, 2)


class TestCheckpoint:
    def test_a_restart_applies_exactly_the_new_lines(
        self, database_url: str, log_path: Path, tmp_path: Path
    ) -> None:
        checkpoint = tmp_path / "tail.checkpoint"
        log_path.write_text(line(1, 8) + line(2, 8) + line(3, 8) + "Processing fi")
        with JobStore(database_url, create_tables=True) as store:
            store.create_job(job_id="job-1")
            first = ProgressHandler(store=store, interval=0.05, auto_create_jobs=False)
            with LogFollower(log_path, handler=first, job_id="job-1", from_start=True,
                             checkpoint=checkpoint) as follower:
                assert follower.poll_once() == 3
            first.close()
            last_old = progress_history(store, "job-1")[-1].id

            with log_path.open("a") as file:  # the half line ends, two more follow
                file.write("le 4 of 8\n" + line(5, 8) + line(6, 8))
            second = ProgressHandler(store=store, interval=0.05, auto_create_jobs=False)
            with LogFollower(log_path, handler=second, job_id="job-1",
                             checkpoint=checkpoint) as follower:
                assert follower.poll_once() == 3
                assert follower.poll_once() == 0
            second.close()
            assert (follower.stats.lines, follower.stats.applied) == (3, 3)
            assert second.stats.outcomes["applied"] == 3, "no old line applied again"
            new = [e.message for e in progress_history(store, "job-1") if e.id > last_old]
            assert new and set(new) <= {line(i, 8).strip() for i in (4, 5, 6)}, new
            assert store.require_job("job-1").percentage == 75.0

    @pytest.mark.parametrize("kind", ["rename", "copytruncate"])
    def test_a_file_rotated_while_stopped_is_finished_first(
        self, store: JobStore, handler: ProgressHandler, log_path: Path, tmp_path: Path,
        kind: str,
    ) -> None:
        checkpoint = tmp_path / "tail.checkpoint"
        log_path.write_text(line(1, 6) + line(2, 6))
        with LogFollower(log_path, from_start=True, checkpoint=checkpoint) as follower:
            assert follower.poll_once() == 2
        writer = LogWriter(log_path, [line(i, 6) for i in range(3, 7)], {2: kind})
        writer.run()
        assert writer.error is None
        with LogFollower(log_path, checkpoint=checkpoint) as follower:
            seen = list(follower.follow(max_seconds=0))
        assert messages(seen) == [line(i, 6).strip() for i in range(3, 7)]
        assert follower.stats.rotations == 1

    def test_a_replaced_file_is_read_from_its_start(self, log_path: Path, tmp_path: Path) -> None:
        checkpoint = tmp_path / "tail.checkpoint"
        log_path.write_text(line(1, 4) + line(2, 4))
        with LogFollower(log_path, from_start=True, checkpoint=checkpoint) as follower:
            follower.poll_once()
        log_path.unlink()
        log_path.write_text(line(3, 4) + line(4, 4) + line(4, 4))  # longer than before
        with LogFollower(log_path, checkpoint=checkpoint) as follower:
            assert follower.poll_once() == 3

    def test_the_checkpoint_is_written_atomically_and_keeps_other_files(
        self, log_path: Path, tmp_path: Path
    ) -> None:
        checkpoint = tmp_path / "tail.checkpoint"
        other = str(tmp_path / "other.log")
        checkpoint.write_text(json.dumps({"version": 1, "files": {other: {"offset": 3}}}))
        log_path.write_text(line(1, 4))
        with LogFollower(log_path, from_start=True, checkpoint=checkpoint) as follower:
            follower.poll_once()
        files = json.loads(checkpoint.read_text())["files"]
        assert files[other] == {"offset": 3}
        assert files[str(log_path)]["offset"] == log_path.stat().st_size
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    def test_a_corrupt_checkpoint_is_a_clear_error(self, log_path: Path, tmp_path: Path) -> None:
        checkpoint = tmp_path / "tail.checkpoint"
        checkpoint.write_text("{not json")
        with pytest.raises(CheckpointError, match=r"not a morag-jobs checkpoint.*delete it"):
            LogFollower(log_path, checkpoint=checkpoint)
        assert issubclass(CheckpointError, MoragJobsError)


class TestWhichJob:
    def test_worker_lines_go_to_the_job_mapped_to_the_worker(
        self, database_url: str, log_path: Path
    ) -> None:
        with JobStore(database_url, create_tables=True) as store:
            job = store.create_job()
            handler = ProgressHandler(store=store, interval=0.05, auto_create_jobs=False)
            handler.mappings.bind("worker", "worker-7", job.id)
            log_path.write_text(line(1, 4) + line(3, 4))
            with LogFollower(log_path, handler=handler, worker_id="worker-7",
                             from_start=True) as follower:
                seen = list(follower.follow(max_seconds=0))
            handler.close()
            assert [f.job_id for f in seen] == [job.id, job.id]
            assert store.require_job(job.id).percentage == 75.0

    def test_lines_find_their_job_through_the_task_mapping(
        self, database_url: str, log_path: Path
    ) -> None:
        with JobStore(database_url, create_tables=True) as store:
            job = store.create_job()
            handler = ProgressHandler(store=store, interval=0.05, auto_create_jobs=False)
            handler.mappings.bind("task", TASK_ID, job.id)
            log_path.write_text(
                celery_line(TASK_ID, "Processing file 2 of 4")
                + celery_line(OTHER_TASK_ID, "Processing file 3 of 4")
                + json.dumps({"task_id": TASK_ID, "progress": 0.6, "event": "rows"}) + "\n"
            )
            with LogFollower(log_path, handler=handler, from_start=True,
                             trust_line_ids=True) as follower:
                seen = list(follower.follow(max_seconds=0))
            handler.close()
            assert [f.job_id for f in seen] == [job.id, None, job.id]
            assert (follower.stats.applied, follower.stats.no_job) == (2, 1)
            assert store.require_job(job.id).percentage == 60.0
            assert store.count_jobs() == 1

    def test_lines_without_a_job_are_counted_and_create_none(
        self, store: JobStore, handler: ProgressHandler, log_path: Path
    ) -> None:
        existing = store.create_job()
        log_path.write_text(
            line(1, 4)
            + '{"job_id": "ghost", "progress": 0.5}\n'
            + json.dumps({"job_id": existing.id, "progress": 0.5}) + "\n"
            + '{"worker_id": "nobody", "percent": 10}\n'
        )
        with LogFollower(log_path, handler=handler, from_start=True,
                         trust_line_ids=True) as follower:
            follower.poll_once()
        assert follower.stats.to_dict() == {
            "lines": 4, "events": 4, "applied": 1, "refused": 0, "no_job": 3,
            "rotations": 0, "truncations": 0, "untrusted": 0, "already_applied": 0,
            "truncated_unread": 0, "unread_bytes": 0,
        }
        assert store.count_jobs() == 1, "no job is created for a line without one"
        assert store.require_job(existing.id).percentage == 50.0

    def test_an_unbound_follower_lets_no_line_choose_its_job(
        self, store: JobStore, handler: ProgressHandler, log_path: Path
    ) -> None:
        """A JSON job_id or a Celery prefix forged in a logged value moves nothing."""
        victim = store.create_job()
        handler.mappings.bind("task", TASK_ID, victim.id)
        log_path.write_text(
            json.dumps({"job_id": victim.id, "progress": 0.99}) + "\n"
            + "user said: \n" + celery_line(TASK_ID, "Processing file 4 of 4")
        )
        with LogFollower(log_path, handler=handler, from_start=True) as follower:
            follower.poll_once()
        assert (follower.stats.applied, follower.stats.untrusted) == (0, 2)
        assert store.require_job(victim.id).percentage == 0.0

    def test_an_ended_job_refuses_late_lines(
        self, store: JobStore, handler: ProgressHandler, log_path: Path
    ) -> None:
        store.create_job(job_id="job-1")
        handler.handle_job_completion("job-1", True)
        log_path.write_text(line(1, 4))
        with LogFollower(log_path, handler=handler, job_id="job-1", from_start=True) as f:
            f.poll_once()
        assert (f.stats.applied, f.stats.refused) == (0, 1)

    def test_job_and_worker_exclude_each_other(self, handler: ProgressHandler) -> None:
        with pytest.raises(ValueError, match="either job_id or worker_id"):
            LogFollower("x.log", handler=handler, job_id="a", worker_id="b")


def test_run_stops_when_told_from_another_thread(
    store: JobStore, handler: ProgressHandler, log_path: Path
) -> None:
    store.create_job(job_id="job-1")
    stop = threading.Event()
    with LogFollower(log_path, handler=handler, job_id="job-1", poll_interval=0.02) as f:
        runner = threading.Thread(target=f.run, args=(stop,), daemon=True)
        runner.start()
        log_path.write_text(line(1, 2))
        deadline = time.monotonic() + WAIT_SECONDS
        while store.require_job("job-1").percentage < 50.0:
            assert time.monotonic() < deadline, "the follower never applied the line"
            time.sleep(0.02)
        stop.set()
        runner.join(WAIT_SECONDS)
        assert not runner.is_alive()
    assert f.stats.applied == 1
