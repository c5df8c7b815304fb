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
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from morag_jobs import ProgressEventParser
from morag_jobs.errors import PatternPackError
from morag_jobs.linearity import adversarial, growth
from morag_jobs.packs import builtin_pack_dir, load_packs
from morag_jobs.streams import ProgressStream
from morag_jobs.terminal import MAX_UPDATE_CHARS

PACKS = load_packs([builtin_pack_dir()])
SHORT, LONG = 5_000, 50_000
GROWTH_LIMIT = 30.0


def _assert_linear(name: str, run: Callable[[str], object], scale: int = 1) -> None:
    worst = (0.0, "")
    for short, long in zip(adversarial(SHORT * scale), adversarial(LONG * scale), strict=True):
        grew = growth(run, short, long, floor=1e-4)
        if grew >= GROWTH_LIMIT:  # a busy machine stretches one sample: best of more runs
            grew = growth(run, short, long, repeats=7, floor=1e-4)
        if grew > worst[0]:
            worst = (grew, short[:40])
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


QUADRATIC = r"^(?P<message>.*?)\s+Progress:\s*(?P<percent>\d+)%"
"""The shape of the seed's formats before they were fixed: a lazy run, then a greedy one."""


def _pack(tmp_path: Path, regex: str, name: str = "mine.pattern") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""[[pattern]]
name = "{name}"
regex = '{regex}'
prefilter = "Progress:"
examples = [{{ line = "copying Progress: 5%", percent = 5.0 }}]
""")
    return path


def test_a_user_pack_with_a_super_linear_pattern_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(PatternPackError, match="super-linear") as refused:
        load_packs([builtin_pack_dir()], [_pack(tmp_path, QUADRATIC)])
    assert refused.value.pattern == "mine.pattern" and str(tmp_path) in refused.value.path


def test_a_user_pack_with_a_linear_pattern_loads(tmp_path: Path) -> None:
    linear = r"^(?P<message>[^\n]*?)Progress:\s*+(?P<percent>\d++)%"
    packs = load_packs([builtin_pack_dir()], [_pack(tmp_path, linear)])
    assert any(pattern.name == "mine.pattern" for pattern in packs.patterns)


def test_the_load_time_check_passes_every_built_in_expression(tmp_path: Path) -> None:
    """The built-in packs, loaded as if they were a user's: none is refused."""
    copy = tmp_path / "packs"
    shutil.copytree(builtin_pack_dir(), copy)
    assert len(load_packs([copy]).patterns) == len(PACKS.patterns)


def test_the_log_tap_reads_a_huge_record_by_its_head_and_tail() -> None:
    stream = ProgressStream(ProgressEventParser(use_environment=False))
    record = "Processing progress: Indexing (45%) " + " " * 1_000_000 + "x"
    events = stream.feed_line(record)
    assert [event.percent for event in events] == [45.0]
    assert stream.stats.cut == 1
    fresh = ProgressStream(ProgressEventParser(use_environment=False))
    tail = fresh.feed_line("x" * (MAX_UPDATE_CHARS * 4) + " Step 80/100 embedding")
    assert [event.percent for event in tail] == [80.0], "the end of a long record is read too"
