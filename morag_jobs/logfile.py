"""One open log file, read by whole lines from a byte offset.

Lines are read as bytes and split on ``\\n`` only, so a tqdm bar's ``\\r`` updates stay
one line; a line is handed over once its newline arrives. Until then a bar that is still
drawing its line is shown live: the updates before its last ``\\r`` are handed over as
they come, so a long bar moves its job while it runs instead of only when it ends.

A file is recognised by its device and inode, and by its first bytes and the bytes just
before the offset read (hashed in the checkpoint), so that a copy of it, or the same
inode truncated and written again, can be told apart.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from morag_jobs.logs import get_logger

__all__ = [
    "FINGERPRINT_BYTES",
    "MAX_LINE_BYTES",
    "PASS_BYTES",
    "UNBOUNDED",
    "Block",
    "OpenFile",
    "open_file",
    "sha",
]

log = get_logger(__name__)

FINGERPRINT_BYTES = 64
"""How many bytes at a file's start (and before the checkpoint offset) identify it."""
READ_BYTES = 1 << 20
PASS_BYTES = 8 << 20
"""Per file and pass, so one busy file does not starve the others."""
MAX_LINE_BYTES = 4 << 20
"""A line still without its newline at this size is handed over as it is."""
_COMPACT_BYTES = 64 << 10
UNBOUNDED = 1 << 62
"""The budget of a file that will not grow any more: it is read to its end at once."""


@dataclass(slots=True)
class OpenFile:
    """One open file and how far it has been read."""

    file: BinaryIO
    name: str  # the path it was opened at (it may have been renamed since)
    device: int
    inode: int
    offset: int  # just after the last whole line handed over
    position: int  # where the next read starts
    pending: bytes = b""  # read, but not yet a whole line
    head: bytes = b""  # the file's first bytes, to notice it was truncated or replaced
    before: bytes = b""  # the bytes just before ``offset``, to recognise a copy
    live_upto: int = 0  # pending[:live_upto] was already handed over as live updates
    compacted: bool = False  # pending lost its middle (see _live)
    size_seen: int = 0  # the largest size seen, to tell what a truncation took unread

    @property
    def identity(self) -> tuple[int, int]:
        return self.device, self.inode

    def pread(self, size: int, offset: int) -> bytes:
        try:
            return os.pread(self.file.fileno(), size, offset)
        except OSError:
            return b""

    def size(self) -> int | None:
        try:
            return os.fstat(self.file.fileno()).st_size
        except OSError:
            return None

    def seek(self, offset: int) -> None:
        """Go on from ``offset``, a line start: everything before it counts as handed over."""
        self.file.seek(offset)
        self.position = offset
        self.pending = b""
        _advance(self, offset)

    def rewind(self) -> None:
        """Read again from the start (the file was truncated, or is new)."""
        self.before = b""
        self.seek(0)
        self.head = self.pread(FINGERPRINT_BYTES, 0)

    def back_to_line_start(self) -> None:
        """Start at the end, but before a last line still being written, to read it whole."""
        end = self.position
        tail = self.pread(min(end, _COMPACT_BYTES), max(end - _COMPACT_BYTES, 0))
        start = end - len(tail) + tail.rfind(b"\n") + 1
        if tail and not tail.endswith(b"\n") and (b"\n" in tail or start == 0):
            self.seek(start)

    def truncated(self) -> bool:
        """Whether the file shrank below what was read or its first bytes changed."""
        size = self.size()
        if size is None:
            return False
        head = self.pread(FINGERPRINT_BYTES, 0)
        if size < self.position or not head.startswith(self.head):
            return True
        self.head = head
        self.size_seen = max(self.size_seen, size)
        return False

    def blocks(self, budget: list[int], *, final: bool) -> Iterator[Block]:
        """Blocks of whole lines (``final``: the file has ended, so its last line is whole
        without a newline), then the live update of a line still being drawn."""
        yield from _read(self, budget, final=final)

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True, slots=True)
class Block:
    """Bytes of ``source`` from ``start`` to ``end``: whole lines, or (not ``whole``) the
    live updates of a line still being drawn, which do not move the offset."""

    data: bytes
    whole: bool
    source: OpenFile
    start: int
    end: int


def open_file(path: str, position: int | None) -> OpenFile | None:
    """The file at ``path`` at ``position`` (None: its end), or None when there is none."""
    try:
        file = open(path, "rb", buffering=0)  # noqa: SIM115 - stays open while followed
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("log file cannot be opened yet", path=path, error=str(error))
        return None
    status = os.fstat(file.fileno())
    position = status.st_size if position is None else position
    file.seek(position)
    source = OpenFile(file, path, status.st_dev, status.st_ino, position, position,
                      size_seen=status.st_size)
    source.head = source.pread(FINGERPRINT_BYTES, 0)
    _advance(source, position)
    return source


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(src: OpenFile, budget: list[int], *, final: bool) -> Iterator[Block]:
    while budget[0] > 0:
        start = src.position
        try:
            data = src.file.read(min(READ_BYTES, budget[0]))
        except OSError as error:
            log.warning("log file not readable", path=src.name, error=str(error))
            return
        if not data:
            break
        if start == 0:
            src.head = data[:FINGERPRINT_BYTES]
        elif src.pread(len(src.head), 0) != src.head:
            # Truncated and rewritten since the last look: these bytes are not the next
            # ones of what was read. Leave them for the next pass, which starts over.
            src.file.seek(start)
            return
        src.position += len(data)
        src.size_seen = max(src.size_seen, src.position)
        budget[0] -= len(data)
        cut = data.rfind(b"\n") + 1
        if cut:
            first = src.offset
            block, src.pending = src.pending + data[:cut], data[cut:]
            _advance(src, start + cut, block)
            yield Block(block, True, src, first, src.offset)
        else:
            src.pending += data
        if len(src.pending) > MAX_LINE_BYTES:
            yield _whole_pending(src)
    if final and src.pending:
        yield _whole_pending(src)
    elif not final and b"\r" in src.pending:
        yield from _live(src)


def _live(src: OpenFile) -> Iterator[Block]:
    """The updates of a ``\\r``-separated line still being drawn, each once."""
    last = src.pending.rfind(b"\r")
    if last > src.live_upto:
        src.live_upto = last
        yield Block(src.pending[:last], False, src, src.offset, src.offset)
    if len(src.pending) > _COMPACT_BYTES:
        # Keep what the parser looks at: the line's prefix and its latest update.
        first = src.pending.find(b"\r")
        src.pending = src.pending[:first] + src.pending[last:]
        src.live_upto = first
        src.compacted = True


def _whole_pending(src: OpenFile) -> Block:
    first = src.offset
    block, src.pending = src.pending, b""
    _advance(src, src.position, block)
    return Block(block, True, src, first, src.offset)


def _advance(src: OpenFile, offset: int, block: bytes | None = None) -> None:
    """Everything before ``offset`` (the last bytes of it ``block``) has been handed over."""
    size = min(offset, FINGERPRINT_BYTES)
    if block is None or src.compacted:
        src.before = src.pread(size, offset - size)
    else:
        src.before = (src.before + block)[len(src.before) + len(block) - size:]
    src.offset = offset
    src.live_upto = 0
    src.compacted = False
