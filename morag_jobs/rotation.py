"""Finding the files a followed path named before: renamed, copied or compressed away.

logrotate and its kin move a log file aside under names beside it: ``app.log.1``,
``app.log.2`` ... (a higher number is older), ``app.log-20260101`` or
``app.log.2026-01-01_12`` (names that sort by age), and with ``compress`` the same
again with ``.gz``. A file is recognised by its inode when renamed, and by its content
(its first bytes and the bytes before an offset) when copied.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import os
import re
import zlib
from collections.abc import Callable
from typing import IO, NamedTuple

from morag_jobs.checkpoint import Mark
from morag_jobs.logfile import FINGERPRINT_BYTES, OpenFile, open_file, sha
from morag_jobs.logs import get_logger

__all__ = ["Finished", "find_rotated", "generations", "unread_in_compressed_copy"]

log = get_logger(__name__)

_MAX_SIBLINGS = 50
_OPEN_TRIES = 200
"""Opens of a rotated file that a storm keeps renaming (app.log.6 -> .7 -> ...): each miss
is followed to the file's new name by a scan, so only a storm that renames it again
between every scan and open, 200 times running, loses it (and that is logged)."""
_SCAN_TRIES = 5
_ROTATED = re.compile(r"[.-]\d[\w.:+-]*")
_NUMBERED = re.compile(r"\.(\d+)")
_COMPRESSED: dict[str, Callable[[str], IO[bytes]]] = {
    ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open,  # type: ignore[dict-item]
}
_CHUNK = 1 << 20
Order = tuple[float, float, str]
"""Sorts rotated files oldest first: last write, then number (higher is older), then name."""
_NEWEST: Order = (math.inf, 0.0, "")


class Finished(NamedTuple):
    """A file read to its end: what newer rotated files are looked for after."""

    device: int
    inode: int
    mtime_ns: int
    linked: bool  # still has a name, so a look at the directory must find it

    @property
    def identity(self) -> tuple[int, int]:
        return self.device, self.inode

    @classmethod
    def of(cls, src: OpenFile) -> Finished:
        try:
            status = os.fstat(src.file.fileno())
        except OSError:
            return cls(src.device, src.inode, 0, False)
        return cls(src.device, src.inode, status.st_mtime_ns, status.st_nlink > 0)


class _Sibling(NamedTuple):
    path: str
    status: os.stat_result

    @property
    def identity(self) -> tuple[int, int]:
        return self.status.st_dev, self.status.st_ino


def generations(path: str, last: Finished, current: OpenFile | None) -> list[OpenFile]:
    """Files rotated away after ``last`` and before ``current`` that were never opened.

    In a rotation storm a file can be created and renamed aside between two looks; it
    is found among the rotated names by its place between the two, and returned open,
    oldest first, to be read to its end before ``current``.
    """
    wanted = [last.identity] if last.linked else []
    if current is not None and _linked_elsewhere(path, current):
        wanted.append(current.identity)
    siblings = _scan(path, wanted)
    order = {identity: _order(path, sibling) for identity, sibling in siblings.items()
             if _rotated_name(path, sibling.path)}
    low = order.get(last.identity, (last.mtime_ns, -math.inf, ""))
    high = order.get(current.identity, _NEWEST) if current is not None else _NEWEST
    found = sorted((rank, identity) for identity, rank in order.items() if low < rank < high)
    opened = (_open_identity(path, siblings[identity].path, identity) for _, identity in found)
    return [src for src in opened if src is not None]


def find_rotated(path: str, mark: Mark, exclude: tuple[int, int] | None) -> OpenFile | None:
    """The file that was at ``path`` when ``mark`` was taken, now beside it, at the mark.

    Found by inode (renamed) or else by content (a copytruncate copy): its first bytes
    and the bytes before the mark's offset are the ones that were read.
    """
    if mark.inode is None:
        return None
    siblings = _siblings(path)
    identity = (mark.device, mark.inode)
    renamed = [s.path for s in siblings if s.identity == identity]
    copies = [s.path for s in siblings if mark.head_size > 0 and s.path not in renamed
              and s.identity != exclude]
    for candidate, by_content in [(p, False) for p in renamed] + [(p, True) for p in copies]:
        src = open_file(candidate, mark.offset)
        if src is None:
            continue
        big_enough = (src.size() or 0) >= mark.offset
        if big_enough and same_content(src, mark, check_before=by_content):
            return src
        src.close()
    return None


def same_content(src: OpenFile, mark: Mark, *, check_before: bool) -> bool:
    """Whether ``src`` starts as the file of ``mark`` did (and, ``check_before``, holds the
    same bytes before its offset)."""
    head = src.pread(mark.head_size, 0)
    if len(head) != mark.head_size or sha(head) != mark.head:
        return False
    return not check_before or sha(src.before) == mark.before


def unread_in_compressed_copy(path: str, mark: Mark) -> int | None:
    """How many bytes past ``mark`` a compressed copy of its file holds (None: no copy).

    logrotate's ``copytruncate`` with ``compress`` and no ``delaycompress`` leaves only
    ``app.log.1.gz`` behind: what was written after the last look is in there and was
    never read from the file, which is now empty.
    """
    candidates = sorted((s for s in _siblings(path) if _opener(s.path) is not None),
                        key=lambda s: s.status.st_mtime_ns, reverse=True)
    for sibling in candidates[:3]:
        unread = _unread_in(sibling.path, mark)
        if unread is not None:
            return unread
    return None


def _unread_in(name: str, mark: Mark) -> int | None:
    opener = _opener(name)
    assert opener is not None
    before_size = min(mark.offset, FINGERPRINT_BYTES)
    read = 0
    window = b""
    try:
        with opener(name) as file:
            head = file.read(mark.head_size)
            if len(head) != mark.head_size or sha(head) != mark.head:
                return None
            read, window = len(head), head
            while read < mark.offset:
                data = file.read(min(_CHUNK, mark.offset - read))
                if not data:
                    return None  # shorter than what was read: not a copy of it
                read += len(data)
                window = (window + data)[-FINGERPRINT_BYTES:]
            if sha(window[len(window) - before_size:]) != mark.before:
                return None
            while data := file.read(_CHUNK):
                read += len(data)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as error:
        # Still being written by the compressor, or damaged: what was counted is a floor.
        log.info("compressed log copy not fully readable", path=name, error=str(error))
        if read < mark.offset:
            return None
    return read - mark.offset


def _siblings(path: str) -> list[_Sibling]:
    """Files beside ``path`` whose names start with its name, the most recent first."""
    return sorted(_scan(path, []).values(), key=lambda s: s.status.st_mtime_ns,
                  reverse=True)[:_MAX_SIBLINGS]


def _scan(path: str, wanted: list[tuple[int, int]]) -> dict[tuple[int, int], _Sibling]:
    """Files beside ``path`` by identity, with ``wanted`` among them when they exist.

    A directory read while files in it are renamed can miss an entry or list it twice:
    it is read again until a read adds nothing and ``wanted`` were seen.
    """
    found: dict[tuple[int, int], _Sibling] = {}
    directory, name = os.path.split(path)
    for _ in range(_SCAN_TRIES):
        before = len(found)
        try:
            with os.scandir(directory) as scan:
                for entry in scan:
                    if entry.name.startswith(name) and entry.name != name:
                        sibling = _stat(entry)
                        if sibling is not None:
                            found[sibling.identity] = sibling
        except OSError:
            return found
        if len(found) == before and all(w in found for w in wanted):
            break
    return found


def _stat(entry: os.DirEntry[str]) -> _Sibling | None:
    try:
        return _Sibling(entry.path, entry.stat()) if entry.is_file() else None
    except OSError:  # renamed or removed since the directory was read
        return None


def _linked_elsewhere(path: str, src: OpenFile) -> bool:
    """Whether ``src`` still has a name, and it is not ``path``: it was rotated aside."""
    try:
        if os.fstat(src.file.fileno()).st_nlink == 0:
            return False
        status = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return (status.st_dev, status.st_ino) != src.identity


def _rotated_name(path: str, name: str) -> bool:
    return _ROTATED.fullmatch(name[len(path):]) is not None and _opener(name) is None


def _opener(name: str) -> Callable[[str], IO[bytes]] | None:
    return _COMPRESSED.get(os.path.splitext(name)[1])


def _order(path: str, sibling: _Sibling) -> Order:
    suffix = sibling.path[len(path):]
    numbered = _NUMBERED.fullmatch(suffix)
    number = -float(numbered.group(1)) if numbered else 0.0
    return sibling.status.st_mtime_ns, number, "" if numbered else suffix


def _open_identity(path: str, name: str, identity: tuple[int, int]) -> OpenFile | None:
    """Open the file ``identity`` found at ``name``, following it if it is renamed again."""
    for _ in range(_OPEN_TRIES):
        src = open_file(name, 0)
        if src is not None and src.identity == identity:
            return src
        if src is not None:
            src.close()
        moved = _scan(path, [identity]).get(identity)
        if moved is None:
            break
        name = moved.path
    log.warning("a rotated log file went away before it could be read", path=name)
    return None
