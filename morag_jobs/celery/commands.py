"""``run_with_progress``: run a command and move the current job with what it prints."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import IO, Any

from morag_jobs.celery.context import JobContext, current_context
from morag_jobs.parser import ProgressEventParser

__all__ = ["CommandFailed", "run_with_progress"]

_TAIL_BYTES = 4096
_shared_parser: ProgressEventParser | None = None


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
    check: bool = True,
    **popen_kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; progress it prints (stdout or stderr, ``\\r`` updates too) moves the job.

    ``stage`` makes that progress relative to a stage of the job's plan. Returns the
    completed process with its output as text; raises ``CommandFailed`` (with the tail
    of stderr) when it exits non-zero and ``check`` is true, and
    ``subprocess.TimeoutExpired`` after killing it when ``timeout`` passes.
    """
    global _shared_parser  # noqa: PLW0603 - one parser per process, built on first use
    context = current_context()
    if parser is None:
        if _shared_parser is None:
            _shared_parser = ProgressEventParser()
        parser = _shared_parser
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               **popen_kwargs)
    outputs: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    readers = [
        threading.Thread(target=_pump, args=(stream, outputs[name], parser, context, stage),
                         daemon=True)
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


def _pump(stream: IO[bytes] | None, sink: bytearray, parser: ProgressEventParser,
          context: JobContext, stage: str | None) -> None:
    """Read a pipe as it arrives; every complete '\\n' or '\\r' segment is parsed."""
    if stream is None:
        return
    pending = b""
    fd = stream.fileno()
    while chunk := os.read(fd, 65536):
        sink += chunk
        pending += chunk
        cut = max(pending.rfind(b"\n"), pending.rfind(b"\r"))
        if cut < 0:
            continue
        complete, pending = pending[: cut + 1], pending[cut + 1 :]
        _report(complete.replace(b"\r", b"\n"), parser, context, stage)
    if pending:
        _report(pending, parser, context, stage)
    stream.close()


def _report(block: bytes, parser: ProgressEventParser, context: JobContext,
            stage: str | None) -> None:
    for event in parser.parse_chunk(block):
        context.report_event(replace(event, stage=stage) if stage else event)


def _join(readers: list[threading.Thread]) -> None:
    for reader in readers:
        reader.join(10)


def _text(data: bytearray) -> str:
    return data.decode("utf-8", "replace")
