"""``LogFollower``: follow log files like ``tail -F`` and hand their progress to the handler.

Lines are read as bytes and split on ``\\n`` only, so a tqdm bar's ``\\r`` updates stay
one line; a line is handed over once its newline arrives. Until then a bar that is still
drawing its line is shown live: the updates before its last ``\\r`` are parsed as they
come, so a long bar moves its job while it runs instead of only when it ends.

Rotation: when the name points to another file (rename), the old file is read to its
end and the new one from its start; when the file shrinks or its first bytes change
(copytruncate), it is read from its start again, after the rest of the copy when the
copy lies beside it. A checkpoint remembers, per path, which file (device, inode, a
hash of its first bytes) was read up to which offset, so a restart resumes where the
last run stopped, finishing a file that was rotated away in between.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from morag_jobs.errors import MoragJobsError
from morag_jobs.events import ProgressEvent
from morag_jobs.handler import ApplyResult, ProgressHandler
from morag_jobs.parser import ProgressEventParser
from morag_jobs.streams import ProgressStream
from morag_jobs.writer import RETRYABLE, brief

__all__ = ["CheckpointError", "FollowedEvent", "FollowerStats", "LogFollower"]

log = structlog.get_logger(__name__)

FINGERPRINT_BYTES = 64
"""How many bytes at a file's start (and before the checkpoint offset) identify it."""
READ_BYTES = 1 << 20
PASS_BYTES = 8 << 20
"""Per file and pass, so one busy file does not starve the others."""
MAX_LINE_BYTES = 4 << 20
"""A line still without its newline at this size is handed over as it is."""
_COMPACT_BYTES = 64 << 10
_NEGATIVE_TTL = 2.0
_MAX_SIBLINGS = 50


class CheckpointError(MoragJobsError, ValueError):
    """A checkpoint file that cannot be read or written."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}; fix or delete it to start over")


@dataclass(slots=True)
class FollowerStats:
    """What the follower has seen; an event is ``applied``, ``refused`` or ``no_job``.

    ``lines`` counts whole lines; ``events`` also counts the live updates of a ``\\r``
    line still being drawn. ``rotations`` include ``truncations`` (copytruncate).
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

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FollowedEvent:
    """One event read from ``path``: its job (None when no job was found) and its fate."""

    path: str
    event: ProgressEvent
    job_id: str | None = None
    result: ApplyResult | None = None

    @property
    def applied(self) -> bool:
        return self.result is not None and self.result.accepted


@dataclass(slots=True)
class _Mark:
    """A checkpoint entry: which file was read how far (``inode`` None: none yet)."""

    device: int | None = None
    inode: int | None = None
    offset: int = 0
    head: str = ""
    head_size: int = 0
    before: str = ""

    @classmethod
    def load(cls, data: Any) -> _Mark:
        mark = cls(**data)
        if not isinstance(mark.offset, int) or mark.offset < 0:
            raise ValueError(f"bad offset {mark.offset!r}")
        return mark


@dataclass(slots=True)
class _Open:
    """One open file and how far it has been read."""

    file: BinaryIO
    device: int
    inode: int
    offset: int  # just after the last whole line handed over
    position: int  # where the next read starts
    pending: bytes = b""  # read, but not yet a whole line
    head: bytes = b""  # the file's first bytes, to notice it was truncated or replaced
    before: bytes = b""  # the bytes just before ``offset``, to recognise a copy
    live_upto: int = 0  # pending[:live_upto] was already parsed as live updates
    compacted: bool = False  # pending lost its middle (see _live)

    def mark(self) -> _Mark:
        return _Mark(self.device, self.inode, self.offset, _sha(self.head), len(self.head),
                     _sha(self.before))


class _Tail:
    """One followed path: the file at it now, and a rotated-away one still to finish."""

    def __init__(self, path: str, stats: FollowerStats) -> None:
        self.path = path
        self.stats = stats
        self.source: _Open | None = None
        self.draining: _Open | None = None

    def start(self, mark: _Mark | None, from_start: bool) -> None:
        """Where to begin: the checkpoint's place, else the start or the end of the file."""
        source = _open(self.path, None)
        self.source = source
        if mark is None:
            if source is not None and from_start:
                _rewind(source)
            elif source is not None:
                _back_to_line_start(source)
            return
        if source is not None and _same_file(source, mark):
            source.file.seek(mark.offset)
            source.position = mark.offset
            _advance(source, mark.offset)
            return
        self.draining = _find_rotated(self.path, mark, _identity(source))
        if self.draining is not None:
            self.stats.rotations += 1
            log.info("resuming a rotated log file", path=self.path)
        if source is not None:
            _rewind(source)

    def mark(self) -> _Mark:
        return self.source.mark() if self.source is not None else _Mark()

    def close(self) -> None:
        for opened in (self.draining, self.source):
            if opened is not None:
                opened.file.close()
        self.source = self.draining = None

    def blocks(self, budget: list[int]) -> Iterator[tuple[bytes, bool]]:
        """What there is to hand over, in file order: (bytes, whole lines or a live update)."""
        yield from self._drain()
        source = self.source
        if source is None:
            self.source = source = _open(self.path, 0)
            if source is None:
                return
        try:
            status = os.stat(self.path)
            moved = (status.st_dev, status.st_ino) != (source.device, source.inode)
        except OSError:
            moved = True
        if moved:
            self.draining, self.source = source, None
            self.stats.rotations += 1
            log.info("log file rotated", path=self.path)
            yield from self._drain()
            self.source = source = _open(self.path, 0)
            if source is None:
                return
        elif _truncated(source):
            self.stats.rotations += 1
            self.stats.truncations += 1
            log.info("log file truncated", path=self.path)
            self.draining = _find_rotated(self.path, source.mark(), _identity(source))
            yield from self._drain()
            _rewind(source)
        yield from _read(source, budget, final=False)

    def _drain(self) -> Iterator[tuple[bytes, bool]]:
        """Read a file that will not grow any more to its end, then close it."""
        old = self.draining
        if old is None:
            return
        try:
            yield from _read(old, [1 << 62], final=True)
        finally:
            old.file.close()
            self.draining = None


class LogFollower:
    """Follows ``paths`` and applies the progress in their lines through ``handler``.

    Each line's job is ``job_id``; else the job mapped to ``worker_id``; else the one the
    line names itself (a JSON ``job_id``, or its worker or task id through the handler's
    mappings). Lines without a job are counted in :attr:`stats`, never guessed; a job
    is created only when the handler auto-creates jobs named explicitly. Without a
    handler the events are only yielded by :meth:`follow`.

    A file present at the start is read from its end (from its start with
    ``from_start``, or from where ``checkpoint`` says the last run stopped); a file that
    appears later, or replaces a rotated one, is read from its start.
    """

    def __init__(
        self,
        paths: str | Path | Iterable[str | Path],
        *,
        handler: ProgressHandler | None = None,
        parser: ProgressEventParser | None = None,
        job_id: str | None = None,
        worker_id: str | None = None,
        from_start: bool = False,
        checkpoint: str | Path | None = None,
        poll_interval: float = 0.25,
        total: int | float | None = None,
        duration: float | None = None,
        trust_line_ids: bool = False,
    ) -> None:
        if job_id is not None and worker_id is not None:
            raise ValueError("pass either job_id or worker_id, not both")
        if worker_id is not None and handler is None:
            raise ValueError("worker_id needs a handler: the worker mapping is in its store")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be above 0, not {poll_interval!r}")
        names = list(dict.fromkeys(
            os.path.abspath(p) for p in ([paths] if isinstance(paths, str | Path) else paths)
        ))
        if not names:
            raise ValueError("no paths to follow")
        self.handler = handler
        self.parser = parser or (handler.parser if handler else ProgressEventParser())
        self.job_id = job_id
        self.worker_id = worker_id
        # Unbound, a line could name any job (a JSON job_id, a forged Celery prefix in a
        # logged value): such ids are followed only when the caller says the log is its own.
        self.trust_line_ids = trust_line_ids
        self.poll_interval = poll_interval
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.stats = FollowerStats()
        # Bound to one job, each file is one stream of that job's output: its progress may
        # span lines (ffmpeg's Duration, then time=) and draw nested bars. Unbound, a
        # file interleaves many tasks' lines, so each line stands alone.
        # ``total`` and ``duration`` are what the caller knows that the output may not say
        # (items or bytes to do, a media length), as for run_with_progress.
        self._streams = {
            name: ProgressStream(self.parser, total=total, duration=duration) for name in names
        } if job_id else {}
        self._known_jobs: dict[str, float | None] = {}
        marks, self._foreign = self._load_checkpoint(names)
        self._saved: dict[str, dict[str, Any]] | None = None
        self._tails = [_Tail(name, self.stats) for name in names]
        for tail in self._tails:
            tail.start(marks.get(tail.path), from_start)

    # -- running ---------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Read every file once, apply what was read, save the checkpoint; the lines read."""
        lines, _, _ = self._pass()
        self.save_checkpoint()
        return lines

    def follow(
        self, stop_event: threading.Event | None = None, max_seconds: float | None = None
    ) -> Iterator[FollowedEvent]:
        """Every event, as it is read (and applied), until stopped or out of time.

        Without a handler the checkpoint moves on only once a batch has been consumed.
        """
        stop = stop_event or threading.Event()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while True:
            _, followed, busy = self._pass()
            yield from followed
            self.save_checkpoint()
            remaining = None if deadline is None else deadline - time.monotonic()
            if stop.is_set() or (remaining is not None and remaining <= 0):
                return
            if not busy:
                wait = self.poll_interval
                stop.wait(wait if remaining is None else min(wait, remaining))

    def run(
        self, stop_event: threading.Event | None = None, max_seconds: float | None = None
    ) -> FollowerStats:
        """:meth:`follow` until ``stop_event`` is set or ``max_seconds`` have passed."""
        for _ in self.follow(stop_event, max_seconds):
            pass
        return self.stats

    def close(self) -> None:
        """Save the checkpoint and close the files (the handler is the caller's to close)."""
        try:
            self.save_checkpoint()
        finally:
            for tail in self._tails:
                tail.close()

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one pass --------------------------------------------------------------------------

    def _pass(self) -> tuple[int, list[FollowedEvent], bool]:
        """Read, parse and apply what every file has; the handler is flushed once, at the end."""
        lines = self.stats.lines
        followed: list[FollowedEvent] = []
        busy = False
        for tail in self._tails:
            budget = [PASS_BYTES]
            for data, whole in tail.blocks(budget):
                events = self._parse(data, whole, self._streams.get(tail.path))
                followed.extend(self._hand_over(tail.path, events))
            busy = busy or budget[0] <= 0
        if self.handler is not None and followed:
            self.handler.flush()
        return self.stats.lines - lines, followed, busy

    def _parse(
        self, data: bytes, whole: bool, stream: ProgressStream | None
    ) -> list[ProgressEvent]:
        if whole:
            self.stats.lines += data.count(b"\n") + (not data.endswith(b"\n"))
            if stream is not None:
                return stream.feed(data if data.endswith(b"\n") else data + b"\n")
            return self.parser.parse_chunk(data)
        event = stream.peek(data) if stream is not None else self.parser.parse_line(data)
        return [event] if event is not None else []

    def _hand_over(self, path: str, events: list[ProgressEvent]) -> list[FollowedEvent]:
        stats = self.stats
        stats.events += len(events)
        if self.handler is None:
            return [FollowedEvent(path, event, self.job_id or event.job_id) for event in events]
        followed = []
        for event in events:
            job_id = self._resolve(event)
            if job_id is None:
                stats.no_job += 1
                followed.append(FollowedEvent(path, event))
                continue
            result = self.handler.apply(event, job_id)
            if result.accepted:
                stats.applied += 1
            else:
                stats.refused += 1
            followed.append(FollowedEvent(path, event, job_id, result))
        return followed

    # -- which job -------------------------------------------------------------------------

    def _resolve(self, event: ProgressEvent) -> str | None:
        handler = self.handler
        assert handler is not None
        if self.job_id is not None:
            return self.job_id
        if self.worker_id is not None:
            return handler.get_job_id_for_worker(self.worker_id)
        if not self.trust_line_ids:
            if event.job_id or event.worker_id or event.task_id:
                self.stats.untrusted += 1
            return None
        if event.job_id is not None:
            if handler.auto_create_jobs or self._job_exists(event.job_id):
                return event.job_id
            return None
        if event.worker_id is not None:
            job_id = handler.get_job_id_for_worker(event.worker_id)
            if job_id is not None:
                return job_id
        if event.task_id is not None:
            return handler.get_job_id_for_task(event.task_id)
        return None

    def _job_exists(self, job_id: str) -> bool:
        """Whether a job a line names exists (an absent one is looked up again later)."""
        checked = self._known_jobs.get(job_id, 0.0)
        if checked is None:
            return True
        if job_id in self._known_jobs and time.monotonic() - checked < _NEGATIVE_TTL:
            return False
        assert self.handler is not None
        try:
            exists = self.handler.store.get_job(job_id) is not None
        except RETRYABLE as error:
            log.warning("job lookup failed; the writer will retry", job_id=job_id,
                        error=brief(error))
            return True
        self._known_jobs[job_id] = None if exists else time.monotonic()
        return exists

    # -- checkpoint ------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write the checkpoint (atomically) when anything was read since it was written."""
        if self.checkpoint is None:
            return
        marks = {tail.path: asdict(tail.mark()) for tail in self._tails}
        if marks == self._saved:
            return
        data = {"version": 1, "files": {**self._foreign, **marks}}
        temporary = self.checkpoint.with_name(f".{self.checkpoint.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=1, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.checkpoint)
        except OSError as error:
            raise CheckpointError(self.checkpoint, error.strerror or str(error)) from error
        self._saved = marks

    def _load_checkpoint(
        self, names: list[str]
    ) -> tuple[dict[str, _Mark], dict[str, dict[str, Any]]]:
        """The checkpoint's marks for ``names``, and its entries for other paths (kept)."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return {}, {}
        try:
            files = json.loads(self.checkpoint.read_text(encoding="utf-8"))["files"]
            marks = {name: _Mark.load(files[name]) for name in names if name in files}
        except OSError as error:
            raise CheckpointError(self.checkpoint, error.strerror or str(error)) from error
        except (ValueError, TypeError, KeyError) as error:
            raise CheckpointError(
                self.checkpoint, f"not a morag-jobs checkpoint ({error})"
            ) from error
        return marks, {k: v for k, v in files.items() if k not in names}


# -- reading files -------------------------------------------------------------------------


def _open(path: str, position: int | None) -> _Open | None:
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
    source = _Open(file, status.st_dev, status.st_ino, position, position)
    source.head = _pread(source, FINGERPRINT_BYTES, 0)
    _advance(source, position)
    return source


def _read(src: _Open, budget: list[int], *, final: bool) -> Iterator[tuple[bytes, bool]]:
    """Blocks of whole lines from ``src`` (``final``: the file has ended, so its last
    line is whole without a newline), then the live update of a line still drawn."""
    while budget[0] > 0:
        start = src.position
        try:
            data = src.file.read(min(READ_BYTES, budget[0]))
        except OSError as error:
            log.warning("log file not readable", error=str(error))
            return
        if not data:
            break
        if start == 0:
            src.head = data[:FINGERPRINT_BYTES]
        elif _pread(src, len(src.head), 0) != src.head:
            # Truncated and rewritten since the last look: these bytes are not the next
            # ones of what was read. Leave them for the next pass, which starts over.
            src.file.seek(start)
            return
        src.position += len(data)
        budget[0] -= len(data)
        cut = data.rfind(b"\n") + 1
        if cut:
            block, src.pending = src.pending + data[:cut], data[cut:]
            _advance(src, start + cut, block)
            yield block, True
        else:
            src.pending += data
        if len(src.pending) > MAX_LINE_BYTES:
            yield _whole_pending(src)
    if final and src.pending:
        yield _whole_pending(src)
    elif not final and b"\r" in src.pending:
        yield from _live(src)


def _live(src: _Open) -> Iterator[tuple[bytes, bool]]:
    """The updates of a ``\\r``-separated line still being drawn, each once."""
    last = src.pending.rfind(b"\r")
    if last > src.live_upto:
        src.live_upto = last
        yield src.pending[:last], False
    if len(src.pending) > _COMPACT_BYTES:
        # Keep what the parser looks at: the line's prefix and its latest update.
        first = src.pending.find(b"\r")
        src.pending = src.pending[:first] + src.pending[last:]
        src.live_upto = first
        src.compacted = True


def _whole_pending(src: _Open) -> tuple[bytes, bool]:
    block, src.pending = src.pending, b""
    _advance(src, src.position, block)
    return block, True


def _advance(src: _Open, offset: int, block: bytes | None = None) -> None:
    """Everything before ``offset`` (the last bytes of it ``block``) has been handed over."""
    size = min(offset, FINGERPRINT_BYTES)
    if block is None or src.compacted:
        src.before = _pread(src, size, offset - size)
    else:
        src.before = (src.before + block)[len(src.before) + len(block) - size:]
    src.offset = offset
    src.live_upto = 0
    src.compacted = False


def _rewind(src: _Open) -> None:
    """Read ``src`` again from its start (it was truncated, or is new)."""
    src.file.seek(0)
    src.position = 0
    src.pending = src.before = b""
    src.head = _pread(src, FINGERPRINT_BYTES, 0)
    _advance(src, 0)


def _back_to_line_start(src: _Open) -> None:
    """Start at the end, but before a last line still being written, to read it whole."""
    tail = _pread(src, min(src.position, _COMPACT_BYTES), max(src.position - _COMPACT_BYTES, 0))
    start = src.position - len(tail) + tail.rfind(b"\n") + 1
    if tail and not tail.endswith(b"\n") and (b"\n" in tail or start == 0):
        src.file.seek(start)
        src.position = start
        _advance(src, start)


def _pread(src: _Open, size: int, offset: int) -> bytes:
    try:
        return os.pread(src.file.fileno(), size, offset)
    except OSError:
        return b""


def _identity(src: _Open | None) -> tuple[int, int] | None:
    return (src.device, src.inode) if src is not None else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- recognising files ---------------------------------------------------------------------


def _truncated(src: _Open) -> bool:
    """Whether the file shrank below what was read or its first bytes changed."""
    try:
        size = os.fstat(src.file.fileno()).st_size
    except OSError:
        return False
    head = _pread(src, FINGERPRINT_BYTES, 0)
    if size < src.position or not head.startswith(src.head):
        return True
    src.head = head
    return False


def _same_file(src: _Open, mark: _Mark) -> bool:
    """Whether ``src`` is the file ``mark`` was taken on, still holding what was read."""
    return (
        _identity(src) == (mark.device, mark.inode)
        and os.fstat(src.file.fileno()).st_size >= mark.offset
        and _same_content(src, mark, check_before=False)
    )


def _same_content(src: _Open, mark: _Mark, *, check_before: bool) -> bool:
    head = _pread(src, mark.head_size, 0)
    if len(head) != mark.head_size or _sha(head) != mark.head:
        return False
    return not check_before or _sha(src.before) == mark.before


def _find_rotated(path: str, mark: _Mark, exclude: tuple[int, int] | None) -> _Open | None:
    """The file that was at ``path`` when ``mark`` was taken, now beside it, at the mark.

    Found by inode (renamed) or else by content (a copytruncate copy): its first bytes
    and the bytes before the mark's offset are the ones that were read.
    """
    if mark.inode is None:
        return None
    directory, name = os.path.split(path)
    try:
        with os.scandir(directory) as scan:
            siblings = [(e.stat(), e.path) for e in scan
                        if e.name.startswith(name) and e.name != name and e.is_file()]
    except OSError:
        return None
    siblings = sorted(siblings, key=lambda s: s[0].st_mtime, reverse=True)[:_MAX_SIBLINGS]
    renamed = [p for st, p in siblings if (st.st_dev, st.st_ino) == (mark.device, mark.inode)]
    copies = [p for st, p in siblings if mark.head_size > 0 and p not in renamed
              and (st.st_dev, st.st_ino) != exclude]
    for candidate, by_content in [(p, False) for p in renamed] + [(p, True) for p in copies]:
        src = _open(candidate, mark.offset)
        if src is None:
            continue
        big_enough = os.fstat(src.file.fileno()).st_size >= mark.offset
        if big_enough and _same_content(src, mark, check_before=by_content):
            return src
        src.file.close()
    return None
