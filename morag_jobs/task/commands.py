"""``run_with_progress``: run a command and move the current job with what it prints."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import IO, Any

from morag_jobs.events import ProgressEvent
from morag_jobs.parser import ProgressEventParser
from morag_jobs.streams import ProgressStream
from morag_jobs.task.context import JobContext, current_context

__all__ = ["CommandFailed", "run_with_progress"]

_TAIL_BYTES = 4096


class CommandFailed(subprocess.CalledProcessError):
    """A command exited non-zero; the message carries the tail of its stderr."""

    def __str__(self) -> str:
        tail = (self.stderr or "")[-_TAIL_BYTES:].strip()
        return f"{super().__str__()}\n--- end of stderr ---\n{tail}" if tail else super().__str__()


def run_with_progress(
    cmd: str | Sequence[str],
    *,
    stage: str | None = None,
    parser: ProgressEventParser | None = None,
    timeout: float | None = None,
    total: int | float | None = None,
    duration: float | None = None,
    check: bool = True,
    **popen_kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; progress it prints (stdout or stderr, ``\\r`` updates too) moves the job.

    Both pipes feed one :class:`~morag_jobs.streams.ProgressStream`, so every redraw of
    a bar counts, formats that spread over lines work (ffmpeg's ``Duration:`` then
    ``time=``), and nested bars leave the job on the outer one. ``total`` is the item or
    byte count the caller knows, for output that counts without a total; ``duration``
    (seconds) the media length, for output that reports a time position.
    ``stage`` makes that progress relative to a stage of the job's plan. Returns the
    completed process with its output as text; raises ``CommandFailed`` (with the tail
    of stderr) when it exits non-zero and ``check`` is true, and
    ``subprocess.TimeoutExpired`` after killing it when ``timeout`` passes. Without a
    ``parser`` it reads with the job's runtime's.
    """
    context = current_context()
    progress = ProgressStream(parser or context.runtime.parser, total=total, duration=duration)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               **popen_kwargs)
    outputs: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    readers = [
        threading.Thread(target=_pump, args=(stream, name, outputs[name], progress, context,
                                             stage), daemon=True)
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for reader in readers:
        reader.start()
    try:
        returncode = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        _join(readers)
        raise subprocess.TimeoutExpired(cmd, timeout or 0, _text(outputs["stdout"]),
                                        _text(outputs["stderr"])) from None
    _join(readers)
    stdout, stderr = _text(outputs["stdout"]), _text(outputs["stderr"])
    if check and returncode != 0:
        raise CommandFailed(returncode, cmd, stdout, stderr)
    return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)


def _pump(pipe: IO[bytes] | None, name: str, sink: bytearray, progress: ProgressStream,  # noqa: PLR0917 - a thread target
          context: JobContext, stage: str | None) -> None:
    """Read a pipe as it arrives; every update the stream completes moves the job."""
    if pipe is None:
        return
    fd = pipe.fileno()
    while chunk := os.read(fd, 65536):
        sink += chunk
        _report(progress.feed(chunk, name), context, stage)
    _report(progress.close(name), context, stage)
    pipe.close()


def _report(events: list[ProgressEvent], context: JobContext, stage: str | None) -> None:
    for event in events:
        context.report_event(replace(event, stage=stage) if stage else event)


def _join(readers: list[threading.Thread]) -> None:
    for reader in readers:
        reader.join(10)


def _text(data: bytearray) -> str:
    return data.decode("utf-8", "replace")
