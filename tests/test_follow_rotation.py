"""``LogFollower`` under rotation storms and lossy truncation.

Real files rotated the way logrotate does it (rename and create, copytruncate,
compress); the interleavings of writes, rotations and looks are fixed by seeds, so what
each test asserts does not depend on timing.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
from pathlib import Path

import pytest
from log_helpers import capture_logs

from morag_jobs.follow import FollowedEvent, LogFollower
from tests.test_follow import LogWriter, follow_while_writing, line, messages


def expected(numbers: range, total: int) -> list[str]:
    return [line(i, total).strip() for i in numbers]


def append(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


def rotate_numbered(path: Path, keep: int = 50) -> None:
    """logrotate's default (``create``): app.log.N -> app.log.N+1 ..., app.log -> app.log.1."""
    for number in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{number + 1}"))
    path.rename(path.with_name(f"{path.name}.1"))
    path.touch()


def rotate_dated(path: Path, generation: int) -> None:
    """``dateext``: app.log -> app.log-<stamp>; names sort by age, nothing is renamed twice."""
    path.rename(path.with_name(f"{path.name}-2026112212{generation:06d}"))
    path.touch()


def copytruncate(path: Path, *, compress: bool) -> None:
    """``copytruncate``; with ``compress`` and no ``delaycompress`` the copy is gzipped now."""
    copy = path.with_name(f"{path.name}.1")
    shutil.copyfile(path, copy)
    os.truncate(path, 0)
    if compress:
        with copy.open("rb") as raw, gzip.open(f"{copy}.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
        copy.unlink()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "worker.log"
    path.write_text("")
    return path


class TestRotationStorm:
    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_files_rotated_away_between_two_looks_are_each_read_once_in_order(
        self, log_path: Path, seed: int
    ) -> None:
        """Up to five renames between two looks: every generation is read, oldest first."""
        rng, total, written = random.Random(seed), 400, 0
        seen: list[FollowedEvent] = []
        with LogFollower(log_path) as follower:
            while written < total:
                for _ in range(rng.randint(0, 5)):
                    more = min(rng.randint(0, 6), total - written)
                    append(log_path, "".join(line(i, total) for i in
                                             range(written + 1, written + more + 1)))
                    written += more
                    rotate_numbered(log_path)
                seen.extend(follower.follow(max_seconds=0))
            seen.extend(follower.follow(max_seconds=0))
        assert messages(seen) == expected(range(1, total + 1), total), "each line once, in order"
        assert follower.stats.lines == total

    def test_a_restart_reads_every_generation_rotated_while_stopped(
        self, log_path: Path, tmp_path: Path
    ) -> None:
        checkpoint = tmp_path / "tail.checkpoint"
        append(log_path, line(1, 9) + line(2, 9))
        with LogFollower(log_path, from_start=True, checkpoint=checkpoint) as follower:
            assert follower.poll_once() == 2
        append(log_path, line(3, 9))
        for i in (4, 6, 8):  # three more generations, one line, a rotation, another line
            rotate_numbered(log_path)
            append(log_path, line(i, 9) + line(i + 1, 9))
        with LogFollower(log_path, checkpoint=checkpoint) as follower:
            seen = list(follower.follow(max_seconds=0))
        assert messages(seen) == expected(range(3, 10), 9)
        assert follower.stats.rotations == 3

    @pytest.mark.parametrize("naming", ["numbered", "dated"])
    def test_a_writer_rotating_faster_than_the_follower_looks_loses_and_repeats_no_line(
        self, log_path: Path, naming: str
    ) -> None:
        """A real writer thread renames the file every 15 lines; nothing is deleted."""
        total, rotations = 1500, 100
        writer = StormWriter(log_path, total, every=total // rotations, naming=naming)
        with LogFollower(log_path, from_start=True) as follower:
            seen = follow_while_writing(follower, writer)
        assert messages(seen) == expected(range(1, total + 1), total), "each line once, in order"
        assert follower.stats.rotations == rotations


class StormWriter(LogWriter):
    """Appends numbered lines, renaming the file away every ``every`` lines."""

    def __init__(self, path: Path, total: int, *, every: int, naming: str) -> None:
        super().__init__(path, [line(i, total) for i in range(1, total + 1)], {})
        self.every, self.naming = every, naming

    def run(self) -> None:
        try:
            for number, text in enumerate(self.lines, 1):
                append(self.path, text)
                if number % self.every == 0 and self.naming == "numbered":
                    rotate_numbered(self.path, keep=len(self.lines) // self.every + 1)
                elif number % self.every == 0:
                    rotate_dated(self.path, number)
        except BaseException as error:
            self.error = error


class TestTruncationLoss:
    @pytest.mark.parametrize("when", ["running", "stopped"])
    def test_copytruncate_with_compress_counts_and_warns_of_the_lines_lost(
        self, log_path: Path, tmp_path: Path, when: str
    ) -> None:
        """The copy is gzipped at once: the lines written after the last look are gone."""
        checkpoint = tmp_path / "tail.checkpoint"
        append(log_path, line(1, 6) + line(2, 6))
        unread = line(3, 6) + line(4, 6)
        follower = LogFollower(log_path, from_start=True, checkpoint=checkpoint)
        assert follower.poll_once() == 2
        append(log_path, unread)
        if when == "stopped":
            follower.close()
        copytruncate(log_path, compress=True)
        append(log_path, line(5, 6))
        with capture_logs() as logs:
            if when == "stopped":
                follower = LogFollower(log_path, checkpoint=checkpoint)
            seen = list(follower.follow(max_seconds=0))
        follower.close()
        assert messages(seen) == [line(5, 6).strip()], "the file is read anew from its start"
        assert (follower.stats.truncated_unread, follower.stats.unread_bytes) == (1, len(unread))
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert [(e["path"], e["unread_bytes"]) for e in warnings] == [
            (str(log_path), len(unread))], f"one warning naming the file and the bytes: {logs}"
        assert "delaycompress" in warnings[0]["event"]

    def test_copytruncate_with_the_copy_beside_it_loses_nothing(self, log_path: Path) -> None:
        append(log_path, line(1, 4))
        with LogFollower(log_path, from_start=True) as follower:
            assert follower.poll_once() == 1
            append(log_path, line(2, 4) + line(3, 4))
            copytruncate(log_path, compress=False)
            append(log_path, line(4, 4))
            with capture_logs() as logs:
                seen = list(follower.follow(max_seconds=0))
        assert messages(seen) == expected(range(2, 5), 4)
        assert (follower.stats.truncations, follower.stats.truncated_unread) == (1, 0)
        assert not [e for e in logs if e["log_level"] == "warning"], logs

    def test_a_truncation_that_takes_a_half_written_line_counts_it(
        self, log_path: Path
    ) -> None:
        """No copy at all: what this follower saw past the last whole line is the floor."""
        append(log_path, line(1, 4) + "Processing fi")
        with LogFollower(log_path, from_start=True) as follower:
            assert follower.poll_once() == 1
            os.truncate(log_path, 0)
            append(log_path, line(2, 4))
            seen = list(follower.follow(max_seconds=0))
        assert messages(seen) == [line(2, 4).strip()]
        assert (follower.stats.truncated_unread, follower.stats.unread_bytes) == (1, 13)
