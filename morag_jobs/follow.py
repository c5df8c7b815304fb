"""``LogFollower``: follow log files like ``tail -F`` and hand their progress to the handler.

A pass reads every file (:mod:`morag_jobs.tailing`: rotation, truncation, files rotated
away between two looks), parses what it read, records in the checkpoint what is about
to be applied, hands the events to the handler, has them written, and records the new
place. That order is what makes each line apply once across a SIGKILL; the guarantee
and its limits are spelt out in :mod:`morag_jobs.checkpoint`. A checkpoint remembers,
per path, which file (device, inode, a hash of its first bytes) was read up to which
offset, so a restart resumes where the last run stopped, finishing first the files
rotated away in between.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from morag_jobs.checkpoint import Checkpoint, CheckpointError, InFlight, Mark, landed
from morag_jobs.errors import RETRYABLE, brief
from morag_jobs.events import ProgressEvent, utc_now
from morag_jobs.handler import ApplyResult, ProgressHandler
from morag_jobs.logfile import PASS_BYTES
from morag_jobs.logs import get_logger
from morag_jobs.parser import ProgressEventParser
from morag_jobs.store import Job
from morag_jobs.streams import ProgressStream
from morag_jobs.tailing import FollowerStats, Tail

__all__ = ["CheckpointError", "FollowedEvent", "FollowerStats", "LogFollower"]

log = get_logger(__name__)

_NEGATIVE_TTL = 2.0


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
class _Read:
    """An event read in this pass; ``replayed``: it was in flight when the last run died."""

    path: str
    event: ProgressEvent
    replayed: bool
    job_id: str | None = None
    skip: bool = False


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
        self.parser = parser or getattr(handler, "parser", None) or ProgressEventParser()
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
        self._file = Checkpoint(self.checkpoint) if self.checkpoint is not None else None
        marks, self._in_flight = self._file.load(names) if self._file else ({}, {})
        self._tails = [Tail(name, self.stats) for name in names]
        for tail in self._tails:
            tail.start(marks.get(tail.path), from_start)
        # What the checkpoint file says (None: not written by this run yet), and the
        # marks a pass starts from, which its in-flight record keeps.
        self._saved: dict[str, Mark] | None = None
        self._committed = {tail.path: marks.get(tail.path) or tail.mark() for tail in self._tails}

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

    def save_checkpoint(self) -> None:
        """Write the checkpoint (atomically) when anything was read since it was written."""
        if self._file is None:
            return
        marks = {tail.path: tail.mark() for tail in self._tails}
        if marks != self._saved:
            self._file.save(marks)
            self._saved = self._committed = marks

    # -- one pass --------------------------------------------------------------------------

    def _pass(self) -> tuple[int, list[FollowedEvent], bool]:
        """Read and parse what every file has, then hand it over; the handler is flushed
        once, at the end, and the checkpoint written before and after (see the module)."""
        lines = self.stats.lines
        reads, in_flight, busy = self._read()
        self.stats.events += len(reads)
        if self.handler is None:
            followed = [FollowedEvent(r.path, r.event, self.job_id or r.event.job_id)
                        for r in reads]
        else:
            followed = self._apply(reads, in_flight)
        self._in_flight = {}
        return self.stats.lines - lines, followed, busy

    def _read(self) -> tuple[list[_Read], dict[str, InFlight], bool]:
        # Before anything this pass hands over can be written; a pass that reads again
        # what was in flight keeps that record's time, as the spans it covers are the same.
        at = min((record.at for record in self._in_flight.values()), default=utc_now())
        reads: list[_Read] = []
        in_flight: dict[str, InFlight] = {}
        busy = False
        for tail in self._tails:
            budget = [PASS_BYTES]
            stream = self._streams.get(tail.path)
            replay = self._in_flight.get(tail.path)
            for block in tail.blocks(budget):
                parts = replay.split(block) if replay and block.whole else [(block.data, False)]
                for data, replayed in parts:
                    reads += [_Read(tail.path, event, replayed)
                              for event in self._parse(data, block.whole, stream)]
                if block.whole:
                    in_flight.setdefault(tail.path, InFlight(at)).add(block)
            busy = busy or budget[0] <= 0
        return reads, in_flight, busy

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

    def _apply(self, reads: list[_Read], in_flight: dict[str, InFlight]) -> list[FollowedEvent]:
        handler = self.handler
        assert handler is not None
        for read in reads:
            read.job_id = self._resolve(read.event)
        if self._in_flight:
            self._skip_landed(reads)
        if self._file is not None and in_flight and any(r.job_id and not r.skip for r in reads):
            self._file.save(self._committed, in_flight)
            self._saved = None
        followed = [self._hand_over(read) for read in reads if not read.skip]
        if followed:
            handler.flush()
        self.save_checkpoint()
        return followed

    def _skip_landed(self, reads: list[_Read]) -> None:
        """Mark the events read again that the job table shows applied before the restart."""
        since = min(record.at for record in self._in_flight.values())
        by_job: dict[str, list[_Read]] = {}
        for read in reads:
            if read.replayed and read.job_id is not None:
                by_job.setdefault(read.job_id, []).append(read)
        for job_id, mine in by_job.items():
            count = landed(self._fetch(job_id), [read.event for read in mine], since)
            for read in mine[:count]:
                read.skip = True
            self.stats.already_applied += count
            if count:
                log.info("skipping lines applied before the restart", job_id=job_id,
                         events=count, of=len(mine))

    def _hand_over(self, read: _Read) -> FollowedEvent:
        stats = self.stats
        if read.job_id is None:
            stats.no_job += 1
            return FollowedEvent(read.path, read.event)
        assert self.handler is not None
        result = self.handler.apply(read.event, read.job_id)
        if result.accepted:
            stats.applied += 1
        else:
            stats.refused += 1
        return FollowedEvent(read.path, read.event, read.job_id, result)

    # -- which job -------------------------------------------------------------------------

    def _resolve(self, event: ProgressEvent) -> str | None:
        handler = self.handler
        assert handler is not None
        if self.job_id is not None:
            return self.job_id
        if self.worker_id is not None:
            return handler.mappings.lookup("worker", self.worker_id)
        if not self.trust_line_ids:
            if event.job_id or event.worker_id or event.task_id:
                self.stats.untrusted += 1
            return None
        if event.job_id is not None:
            if handler.auto_create_jobs or self._job_exists(event.job_id):
                return event.job_id
            return None
        return handler.mappings.resolve(event)

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

    def _fetch(self, job_id: str) -> Job | None:
        """The job's row, to see what landed before a restart (unreadable: nothing did)."""
        assert self.handler is not None
        try:
            return self.handler.store.get_job(job_id)
        except RETRYABLE as error:
            log.warning("job lookup failed; its lines in flight at the restart are applied "
                        "again", job_id=job_id, error=brief(error))
            return None
