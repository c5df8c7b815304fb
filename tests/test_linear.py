"""Every expression the parser runs stays linear in the length of its input.

A log line is input nobody here controls: one line of 40,000 characters must not cost a
worker seconds. Each built-in pattern, prefix, prefilter and recogniser cue is run on
adversarial lines of two lengths (whitespace runs, digit runs, '%' runs, '|' runs,
nested brackets, repeated separators) and the longer must cost about ten times the
shorter, not a hundred. The bound is loose (30x for 10x the input) so a busy machine
does not fail it; a quadratic expression lands near 100x.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from morag_jobs import ProgressEventParser
from morag_jobs.packs import builtin_pack_dir, load_packs
from morag_jobs.streams import ProgressStream

PACKS = load_packs([builtin_pack_dir()])
SHORT, LONG = 5_000, 50_000
GROWTH_LIMIT = 30.0
HEADS = ["", "Processing progress: a", "Progress: 5% - a", "[ 5% ] a", "Stage: a (",
         "45%|", "frame=1 ", "Epoch ", "Downloading ", "x: ", "{\"progress\": "]
BODIES = [" ", "1", "%", "|", "[", "(", "1/", "1 of ", ": ", "..", "=> ", ":00", "5% ", "#",
          "=", "\r5%"]


def adversarial(length: int) -> Iterator[str]:
    for head in HEADS:
        for body in BODIES:
            yield head + body * (length // len(body)) + "x"


def _seconds(run: Callable[[str], object], line: str) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        run(line)
        best = min(best, time.perf_counter() - start)
    return best


def _assert_linear(name: str, run: Callable[[str], object], scale: int = 1) -> None:
    worst = (0.0, "")
    for short, long in zip(adversarial(SHORT * scale), adversarial(LONG * scale), strict=True):
        small = max(_seconds(run, short), 1e-4)  # below this, timer noise dominates
        growth = _seconds(run, long) / small
        if growth > worst[0]:
            worst = (growth, short[:40])
    assert worst[0] < GROWTH_LIMIT, (
        f"{name} grew {worst[0]:.0f}x for 10x the input on {worst[1]!r}...: super-linear")


def _expressions() -> Iterator[object]:
    for pattern in PACKS.patterns:
        yield pytest.param(pattern.regex, id=f"pattern:{pattern.name}")
        if pattern.prefilter is not None:
            yield pytest.param(pattern.prefilter.scanner, id=f"prefilter:{pattern.name}")
    for prefix in PACKS.prefixes:
        yield pytest.param(prefix.regex, id=f"prefix:{prefix.name}")
    for context in PACKS.contexts:
        yield pytest.param(context.regex, id=f"context:{context.name}")
    for cue in PACKS.recogniser.cues:
        yield pytest.param(cue.regex, id=f"cue:{cue.name}")


@pytest.mark.parametrize("expression", list(_expressions()))
def test_every_shipped_expression_is_linear(expression: re.Pattern[str]) -> None:
    _assert_linear(expression.pattern[:60], expression.search)


def test_parse_line_is_linear_on_adversarial_lines() -> None:
    parser = ProgressEventParser(use_environment=False)
    _assert_linear("parse_line", parser.parse_line)


def test_a_stream_is_linear_on_one_endless_line() -> None:
    parser = ProgressEventParser(use_environment=False)

    def feed(line: str) -> object:
        stream = ProgressStream(parser)
        for start in range(0, len(line), 4096):
            stream.feed(line[start : start + 4096])
        return stream.close()

    # A stream keeps at most MAX_UPDATE_CHARS of a line that never ends, so it is
    # measured from lengths beyond that cap, where what remains is reading the input.
    _assert_linear("ProgressStream.feed", feed, scale=10)
