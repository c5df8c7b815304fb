"""One followed path across rotation: the file at it now, and the ones it named before.

When the path names another file (renamed away, perhaps several times between two
looks: ``app.log`` -> ``app.log.1`` -> ``app.log.2``), the file already open is read
through its descriptor to its end, then every file rotated away in between that was
never opened, oldest first, and only then the new one from its start: no line is lost
while the rotated files exist. When the file is truncated in place (``copytruncate``),
the rest is read from the copy beside it; when no copy holds it (``compress`` without
``delaycompress``), the bytes never read are counted and warned about, not lost in
silence.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from morag_jobs.checkpoint import Mark
from morag_jobs.logfile import UNBOUNDED, Block, OpenFile, open_file
from morag_jobs.logs import get_logger
from morag_jobs.rotation import (
    Finished,
    find_rotated,
    generations,
    same_content,
    unread_in_compressed_copy,
)

__all__ = ["FollowerStats", "Tail"]

log = get_logger(__name__)


@dataclass(slots=True)
class FollowerStats:
    """What the follower has seen; an event is ``applied``, ``refused`` or ``no_job``.

    ``lines`` counts whole lines; ``events`` also counts the live updates of a ``\\r``
    line still being drawn. ``rotations`` include ``truncations`` (copytruncate) and
    the files rotated away between two looks.
    """

    lines: int = 0
    events: int = 0
    applied: int = 0
    refused: int = 0
    no_job: int = 0
    rotations: int = 0
    truncations: int = 0
    untrusted: int = 0
    """Events (counted in ``no_job`` too) whose line named a job, worker or task that an
    unbound follower not told to trust line ids may not move."""
    already_applied: int = 0
    """Events read again after a restart that the job table shows were applied before it
    (so they are skipped, not applied twice)."""
    truncated_unread: int = 0
    """Truncations that took bytes never read with them: lines lost, not just late."""
    unread_bytes: int = 0
    """How many bytes those truncations took (at least)."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Tail:
    """One followed path: the file at it now, and rotated-away ones still to finish."""

    def __init__(self, path: str, stats: FollowerStats) -> None:
        self.path = path
        self.stats = stats
        self.source: OpenFile | None = None
        self.backlog: list[OpenFile] = []
        self.last: Finished | None = None

    def start(self, mark: Mark | None, from_start: bool) -> None:
        """Where to begin: the checkpoint's place, else the start or the end of the file."""
        source = open_file(self.path, None)
        if mark is None:
            if source is not None and from_start:
                source.rewind()
            elif source is not None:
                source.back_to_line_start()
            self.source = source
            return
        if source is not None and _same_file(source, mark):
            source.seek(mark.offset)
            self.source = source
            return
        old = find_rotated(self.path, mark, source.identity if source is not None else None)
        if old is not None:
            self.stats.rotations += 1
            log.info("resuming a rotated log file", path=self.path, rotated=old.name)
            self.backlog.append(old)
        elif source is not None and source.identity == (mark.device, mark.inode):
            self._count_unread(mark, 0)
        if source is not None:
            # Read from its start once what was rotated away before it has been read.
            source.close()

    def mark(self) -> Mark:
        return Mark.of(self.source) if self.source is not None else Mark()

    def close(self) -> None:
        for opened in [*self.backlog, self.source]:
            if opened is not None:
                opened.close()
        self.source, self.backlog = None, []

    def blocks(self, budget: list[int]) -> Iterator[Block]:
        """What there is to hand over, in the order it was written."""
        yield from self._finish()
        source = self.source
        if source is not None and self._moved(source):
            self.stats.rotations += 1
            log.info("log file rotated", path=self.path)
            self.source = None
            self.backlog.append(source)
            yield from self._finish()
            source = None
        if source is None:
            self.source = source = open_file(self.path, 0)
            if source is None:
                return
            yield from self._catch_up(source)
        elif source.truncated():
            yield from self._truncation(source)
        yield from source.blocks(budget, final=False)

    def _moved(self, source: OpenFile) -> bool:
        try:
            status = os.stat(self.path)
        except OSError:
            return True
        return (status.st_dev, status.st_ino) != source.identity

    def _finish(self) -> Iterator[Block]:
        """Read files that will not grow any more to their ends, oldest first."""
        while self.backlog:
            old = self.backlog[0]
            try:
                yield from old.blocks([UNBOUNDED], final=True)
            finally:
                self.backlog.pop(0)
                self.last = Finished.of(old)
                old.close()

    def _catch_up(self, current: OpenFile) -> Iterator[Block]:
        """Read the files rotated away since the last one finished, before ``current``."""
        if self.last is None:
            return
        missed = generations(self.path, self.last, current)
        if missed:
            self.stats.rotations += len(missed)
            log.info("reading log files rotated away between two looks", path=self.path,
                     rotated=[src.name for src in missed])
            self.backlog.extend(missed)
            yield from self._finish()

    def _truncation(self, source: OpenFile) -> Iterator[Block]:
        """Truncated in place: the rest from the copy beside it, then the file anew."""
        self.stats.rotations += 1
        self.stats.truncations += 1
        mark = Mark.of(source)
        copy = find_rotated(self.path, mark, source.identity)
        if copy is not None:
            log.info("log file truncated; reading the rest from its copy", path=self.path,
                     copy=copy.name)
            self.backlog.append(copy)
            yield from self._finish()
        else:
            self._count_unread(mark, source.size_seen - source.offset)
        source.rewind()
        source.size_seen = 0

    def _count_unread(self, mark: Mark, seen: int) -> None:
        """A truncation with no copy to read the rest from: say what it took unread.

        ``seen`` is what this follower saw past ``mark`` itself; a compressed copy tells
        the rest. Nothing known to be lost is not proof that nothing was.
        """
        compressed = unread_in_compressed_copy(self.path, mark)
        unread = max(seen, compressed or 0)
        if unread > 0:
            self.stats.truncated_unread += 1
            self.stats.unread_bytes += unread
            log.warning("log file truncated before it was read to its end: lines lost "
                        "(with copytruncate, use delaycompress)", path=self.path,
                        unread_bytes=unread)
        else:
            log.info("log file truncated", path=self.path,
                     copy="compressed" if compressed is not None else "not found")


def _same_file(src: OpenFile, mark: Mark) -> bool:
    """Whether ``src`` is the file ``mark`` was taken on, still holding what was read."""
    return (
        src.identity == (mark.device, mark.inode)
        and (src.size() or 0) >= mark.offset
        and same_content(src, mark, check_before=False)
    )
