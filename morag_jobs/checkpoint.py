"""The ``tail`` checkpoint: how far each followed file was read, and what was in flight.

Its guarantee, for a follower with a handler: a line is applied to the job table once,
across a SIGKILL at any point. The job table and this file cannot be written in one
transaction, so each pass writes the checkpoint twice:

1. before handing the pass's events over: the marks of the last pass (unchanged) plus,
   per path, the ``applying`` record: the time, and the spans (file, byte range) whose
   events are about to be applied;
2. once the handler has written them: the new marks, without ``applying``.

A restart that finds ``applying`` reads from the old marks, so every span is read again,
and asks the job table what landed: a job whose last progress was written after the
record's time took a prefix of its events, the longest one whose last message and
count are the job's summary and count now (:func:`landed`). Those events are skipped,
the rest applied. So a kill between the write and step 2 re-applies nothing, and a kill
before the write loses nothing, the last line of a job included.

Where that cannot be decided it leans to skipping (at most once): events without a
message or a count to recognise them by, and a job that another source wrote meanwhile.
Progress is monotonic and the next line carries a newer figure, so a skipped update
costs a moment of staleness; a line applied twice would move counts and the summary
back and write history twice. Live updates of a line still being drawn are not in any
span: they are shown again after a restart, until the line's end is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from morag_jobs.errors import MoragJobsError
from morag_jobs.events import ProgressEvent
from morag_jobs.logfile import Block, OpenFile, sha
from morag_jobs.store import Job

__all__ = ["Checkpoint", "CheckpointError", "InFlight", "Mark", "Span", "landed"]

VERSION = 2
"""Version 2 adds ``applying``; version 1 files are read as they are."""


class CheckpointError(MoragJobsError, ValueError):
    """A checkpoint file that cannot be read or written."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}; fix or delete it to start over")


@dataclass(slots=True)
class Mark:
    """Which file was read how far (``inode`` None: none yet)."""

    device: int | None = None
    inode: int | None = None
    offset: int = 0
    head: str = ""
    head_size: int = 0
    before: str = ""

    @classmethod
    def of(cls, src: OpenFile) -> Mark:
        return cls(src.device, src.inode, src.offset, sha(src.head), len(src.head),
                   sha(src.before))

    @classmethod
    def load(cls, data: Any) -> Mark:
        mark = cls(**data)
        if not isinstance(mark.offset, int) or mark.offset < 0:
            raise ValueError(f"bad offset {mark.offset!r}")
        return mark


@dataclass(slots=True)
class Span:
    """Bytes ``start``..``end`` of a file, known by content (its first bytes and the bytes
    before ``end``), so that a copy of it is recognised and a rewritten inode is not."""

    head: str
    head_size: int
    start: int
    end: int
    before: str
    before_size: int

    @classmethod
    def of(cls, block: Block) -> Span:
        src = block.source
        return cls(sha(src.head), len(src.head), block.start, block.end, sha(src.before),
                   len(src.before))

    def extend(self, block: Block) -> bool:
        """Take in the block that follows on in the same file; False if it does not."""
        src = block.source
        if block.start != self.end or sha(src.head[:self.head_size]) != self.head:
            return False
        self.end, self.before, self.before_size = block.end, sha(src.before), len(src.before)
        return True

    def overlap(self, block: Block) -> tuple[int, int] | None:
        """Where ``block`` lies in this span (offsets into its data), or None."""
        if block.end <= self.start or block.start >= self.end:
            return None
        src = block.source
        if (sha(src.pread(self.head_size, 0)) != self.head
                or sha(src.pread(self.before_size, self.end - self.before_size)) != self.before):
            return None
        return max(self.start - block.start, 0), min(self.end, block.end) - block.start


@dataclass(slots=True)
class InFlight:
    """The events of ``spans`` were being applied from ``at`` on."""

    at: datetime
    spans: list[Span] = field(default_factory=list)

    def add(self, block: Block) -> None:
        if not (self.spans and self.spans[-1].extend(block)):
            self.spans.append(Span.of(block))

    def split(self, block: Block) -> list[tuple[bytes, bool]]:
        """``block``'s data in parts, each marked True when it lies in a span."""
        for span in self.spans:
            found = span.overlap(block)
            if found is not None:
                first, last = found
                parts = [(block.data[:first], False), (block.data[first:last], True),
                         (block.data[last:], False)]
                return [(data, replayed) for data, replayed in parts if data]
        return [(block.data, False)]

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "spans": [asdict(span) for span in self.spans]}

    @classmethod
    def load(cls, data: Any) -> InFlight:
        return cls(datetime.fromisoformat(data["at"]), [Span(**s) for s in data["spans"]])


class Checkpoint:
    """The checkpoint file: read once at the start, replaced atomically at each write.

    Entries of paths this follower does not follow are kept as they are.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._foreign: dict[str, Any] = {}

    def load(self, names: Sequence[str]) -> tuple[dict[str, Mark], dict[str, InFlight]]:
        """The marks for ``names``, and what was in flight when the last run stopped."""
        if not self.path.exists():
            return {}, {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version", 1) not in (1, VERSION):
                raise ValueError(f"version {data['version']!r}, not {VERSION} or older")
            files = data["files"]
            entries = {name: dict(files[name]) for name in names if name in files}
            inflight = {name: InFlight.load(entry.pop("applying"))
                        for name, entry in entries.items() if "applying" in entry}
            marks = {name: Mark.load(entry) for name, entry in entries.items()}
        except OSError as error:
            raise self._error(error) from error
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise CheckpointError(self.path, f"not a morag-jobs checkpoint ({error})") from error
        self._foreign = {k: v for k, v in files.items() if k not in names}
        return marks, inflight

    def save(self, marks: dict[str, Mark], inflight: dict[str, InFlight] | None = None) -> None:
        """Replace the file: written beside it, synced, then renamed over it."""
        files: dict[str, Any] = {**self._foreign}
        for name, mark in marks.items():
            files[name] = asdict(mark)
            if inflight and name in inflight:
                files[name]["applying"] = inflight[name].to_json()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump({"version": VERSION, "files": files}, file, indent=1, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
            _sync_directory(self.path.parent)
        except OSError as error:
            raise self._error(error) from error

    def _error(self, error: OSError) -> CheckpointError:
        return CheckpointError(self.path, error.strerror or str(error))


def landed(job: Job | None, events: Sequence[ProgressEvent], since: datetime) -> int:
    """How many of a job's in-flight ``events`` (in order) its row shows written.

    None unless progress was written after ``since``; then the longest prefix whose
    last message and last count are the job's summary and count. A write that matches
    no prefix was another source's: all are taken as written (see the module's note).
    """
    if job is None or job.last_progress_at is None or job.last_progress_at < since:
        return 0
    found = len(events)
    message: str | None = None
    count: tuple[int, int | None] | None = None
    for number, event in enumerate(events, 1):
        message = event.message or message
        count = (event.current, event.total) if event.current is not None else count
        if ((message is None or message == job.summary)
                and (count is None or count == (job.current, job.total))):
            found = number
    return found


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable: a crash must not bring the old file back."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
