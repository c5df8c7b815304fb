"""Telling a linear expression from a super-linear one, by running it on hostile lines.

A log line is input nobody here controls, and a backtracking regex with overlapping
quantifiers (``.*?\\s+``, ``(\\s*\\S+)*``) can cost the square of the line's length: one
40,000-character line then holds a worker for seconds. The built-in packs are held to
linear time by the test suite; a user's pack is checked by :func:`superlinear` when it is
loaded, so such a pattern is refused with its file and name before any worker runs it.

The check runs the expression on adversarial lines (runs of whitespace, digits, ``%``,
``|``, brackets, separators, after heads taken from the pattern's own examples) at two
lengths and compares the costs. It judges only what is slow in absolute terms too, so a
busy machine's noise on microsecond searches never refuses a sound pattern.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator

__all__ = ["BODIES", "HEADS", "adversarial", "growth", "heads_of", "superlinear"]

HEADS = ("", "Processing progress: a", "Progress: 5% - a", "[ 5% ] a", "Stage: a (",
         "45%|", "frame=1 ", "Epoch ", "Downloading ", "x: ", "{\"progress\": ")
"""Starts of lines that get many patterns past their first literal."""
BODIES = (" ", "1", "%", "|", "[", "(", "1/", "1 of ", ": ", "..", "=> ", ":00", "5% ", "#",
          "=", "\r5%")
"""What is repeated to the line's length: the runs quantifiers overlap on."""

SHORT, LONG = 1_000, 8_000
"""The lengths compared at load time: 8x the input."""
GROWTH_LIMIT = 25.0
"""A linear search grows about 8x for 8x the input, a quadratic one about 64x."""
SLOW = 0.004
"""Seconds below which the long search is fast enough not to be judged at all."""

_CUT = re.compile(r"(?<=\S)(?=\s)|(?<=\D)(?=\d)")


def adversarial(length: int, heads: Iterable[str] = HEADS) -> Iterator[str]:
    """Each head followed by each body repeated to about ``length`` characters."""
    for head in heads:
        for body in BODIES:
            yield head + body * (length // len(body)) + "x"


def heads_of(lines: Iterable[str], limit: int = 8) -> list[str]:
    """Heads from a pattern's example lines: each line cut where a space or digit run
    starts, so the adversarial run lands where the pattern's own quantifiers are."""
    heads = [""]
    for line in lines:
        for cut in _CUT.finditer(line):
            head = line[: cut.start()]
            if head not in heads:
                heads.append(head)
            if len(heads) >= limit:
                return heads
    return heads


def growth(
    run: Callable[[str], object], short: str, long: str, repeats: int = 2, floor: float = 1e-5
) -> float:
    """How much more the long line costs than the short one (best of ``repeats``); the
    short one counts as at least ``floor`` seconds, below which timer noise dominates."""
    return _seconds(run, long, repeats) / max(_seconds(run, short, repeats), floor)


def superlinear(search: Callable[[str], object], heads: Iterable[str] = HEADS) -> str | None:
    """The start of a line on which ``search`` grows super-linearly, or None if none does."""
    for short, long in zip(adversarial(SHORT, heads), adversarial(LONG, heads), strict=True):
        if _seconds(search, long, 1) < SLOW:
            continue
        if growth(search, short, long, 3) > GROWTH_LIMIT:
            return long[:40]
    return None


def _seconds(run: Callable[[str], object], line: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(line)
        best = min(best, time.perf_counter() - start)
    return best
