"""Score the parser on real tools' output (``fixtures/logs/real/``) against the tools' own numbers.

Three ways, as the product reads output:
- ``lines``: every ``\\n`` line through ``parse_line`` (a log line: its last update wins);
- ``chunk``: the whole file through ``parse_chunk`` (must find what ``lines`` finds);
- ``stream``: the bytes through a ``ProgressStream`` as ``run_with_progress`` and
  ``morag-jobs tail`` feed them (every update counts, state across lines, outer bars).

Per capture it prints the updates in the truth, those recovered with the right percent
(within one point), whether the job's final percent is right, and the false positives
(events on lines where the tool drew no progress). The final percent is the last
event's, as the truth's is the tool's last word (a job's own percent never goes down,
so for a tool whose phases each run to 100% the job stays at the highest). The summary
line counts the updates whose own text carries a percent or n/N (``explicit``), the
measure the thresholds use.

    python bench/score_real.py [--corpus fixtures/logs/real] [--verbose NAME]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from morag_jobs import ProgressEventParser
from morag_jobs.streams import ProgressStream

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "logs" / "real"
TOLERANCE = 1.0


@dataclass
class Score:
    """One capture read one way."""

    name: str
    mode: str
    expected: int = 0
    recovered: int = 0
    expected_explicit: int = 0
    recovered_explicit: int = 0
    false_positives: int = 0
    wrong: int = 0
    final_expected: float | None = None
    final_got: float | None = None
    misses: list[str] = field(default_factory=list)

    @property
    def final_right(self) -> bool:
        if self.final_expected is None:
            return self.final_got is None
        return self.final_got is not None and abs(self.final_got - self.final_expected) <= 1.0


@dataclass
class Capture:
    name: str
    data: bytes
    truth: dict[str, Any]

    @property
    def lines(self) -> list[bytes]:
        parts = self.data.split(b"\n")
        return parts[:-1] if parts and parts[-1] == b"" else parts

    def updates(self) -> list[dict[str, Any]]:
        """The truth's updates, a figure drawn again unchanged counted once."""
        kept: list[dict[str, Any]] = []
        for update in self.truth.get("updates", []):
            if kept and abs(kept[-1]["percent"] - update["percent"]) < 1e-9:
                continue
            kept.append(update)
        return kept

    def updates_by_line(self) -> dict[int, list[dict[str, Any]]]:
        by_line: dict[int, list[dict[str, Any]]] = {}
        for update in self.updates():
            by_line.setdefault(update["line"], []).append(update)
        return by_line

    def inner_lines(self) -> set[int]:
        return {update["line"] for update in self.truth.get("inner", [])}


def captures(corpus: Path = CORPUS) -> Iterator[Capture]:
    callers_path = corpus / "callers.json"
    callers = json.loads(callers_path.read_text()) if callers_path.exists() else {}
    for truth_path in sorted(corpus.glob("*.truth.json")):
        name = truth_path.name.removesuffix(".truth.json")
        log_path = truth_path.with_name(f"{name}.log")
        if log_path.exists():
            truth = json.loads(truth_path.read_text())
            known = callers.get(name, {})
            truth.setdefault("caller_total", known.get("total"))
            truth.setdefault("caller_duration", known.get("duration"))
            yield Capture(name, log_path.read_bytes(), truth)


def _close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= TOLERANCE


def _unexpected(capture: Capture, number: int, percent: float | None) -> bool:
    """An event where the tool drew no new progress: a false positive, unless it repeats
    the figure the tool last drew (the truth lists a figure once, where first drawn)."""
    if capture.truth.get("kind") == "non-progress":
        return True
    if percent is None:  # a count without a total on a progress capture: no claim made
        return False
    before = [u["percent"] for u in capture.truth.get("updates", []) if u["line"] <= number]
    if before and abs(before[-1] - percent) <= TOLERANCE:
        return False
    # A figure an inner bar drew on this line is the wrong bar followed, not a false claim.
    return not any(u["line"] == number and abs(u["percent"] - percent) <= TOLERANCE
                   for u in capture.truth.get("inner", []))


def score_lines(capture: Capture, parser: ProgressEventParser) -> Score:
    """Each line through parse_line: the line's last drawn update is what it should give."""
    score = Score(capture.name, "lines", final_expected=capture.truth.get("final_percent"))
    expected = capture.updates_by_line()
    inner = capture.inner_lines()
    for number, line in enumerate(capture.lines, start=1):
        event = parser.parse_line(line)
        percent = event.percent if event is not None else None
        truth = expected.get(number)
        if truth:
            last = truth[-1]
            score.expected += 1
            score.expected_explicit += bool(last.get("explicit", True))
            if _close(percent, last["percent"]):
                score.recovered += 1
                score.recovered_explicit += bool(last.get("explicit", True))
            else:
                score.misses.append(f"line {number}: want {last['percent']} got {percent}")
                score.wrong += percent is not None
        elif event is not None and number not in inner and _unexpected(capture, number, percent):
            score.false_positives += 1
            score.misses.append(f"line {number}: false positive {percent} from {event.format}")
        if percent is not None:
            score.final_got = percent  # the tool's last word, as the truth's final is
    return score


def score_chunk(capture: Capture, parser: ProgressEventParser, lines: Score) -> Score:
    """The whole file through parse_chunk: it must give exactly what parse_line gave."""
    chunk_events = [e.percent for e in parser.parse_chunk(capture.data)]
    line_events = [e.percent for e in map(parser.parse_line, capture.lines) if e is not None]
    score = Score(**{**lines.__dict__, "mode": "chunk", "misses": []})
    if chunk_events != line_events:
        score.wrong += 1
        score.misses.append(f"parse_chunk gave {len(chunk_events)} events, "
                            f"parse_line {len(line_events)}")
    return score


def score_stream(capture: Capture, parser: ProgressEventParser) -> Score:
    """The bytes through a ProgressStream, line by line, as run_with_progress feeds them.

    Truth and events are aligned in order: an update is recovered by the next unused
    event with its percent drawn after the previous update's line and by its own line
    (a format may give the figure a few lines before the tool's block ends, as ffmpeg's
    ``-progress`` blocks do); events passed over are weighed as false positives.
    """
    truth = capture.truth
    score = Score(capture.name, "stream", final_expected=truth.get("final_percent"))
    stream = ProgressStream(parser, total=truth.get("caller_total"),
                            duration=truth.get("caller_duration"))
    events: list[tuple[int, float | None]] = []
    lines = capture.lines
    for number, line in enumerate(lines, start=1):
        ending = b"\n" if number < len(lines) or capture.data.endswith(b"\n") else b""
        got = stream.feed(line + ending)
        if number == len(lines):
            got += stream.close()
        events += [(number, e.percent) for e in got]
    used = [False] * len(events)
    position, previous_line = 0, 0
    for update in capture.updates():
        score.expected += 1
        explicit = bool(update.get("explicit", True))
        score.expected_explicit += explicit
        index = position
        while index < len(events) and events[index][0] < previous_line:
            index += 1
        while index < len(events) and events[index][0] <= update["line"]:
            if _close(events[index][1], update["percent"]):
                break
            index += 1
        if index < len(events) and events[index][0] <= update["line"]:
            used[index] = True
            score.recovered += 1
            score.recovered_explicit += explicit
            position = index + 1
        else:
            score.misses.append(f"line {update['line']}: want {update['percent']}")
        previous_line = update["line"]
    for (number, percent), matched in zip(events, used, strict=True):
        if not matched and _unexpected(capture, number, percent):
            score.false_positives += 1
            score.misses.append(f"line {number}: false positive {percent}")
    percents = [p for _, p in events if p is not None]
    score.final_got = percents[-1] if percents else None
    return score


def score_all(corpus: Path = CORPUS) -> list[Score]:
    scores = []
    for capture in captures(corpus):
        parser = ProgressEventParser(use_environment=False)
        lines = score_lines(capture, parser)
        scores += [lines, score_chunk(capture, parser, lines),
                   score_stream(capture, ProgressEventParser(use_environment=False))]
    return scores


def summary(scores: list[Score], mode: str) -> dict[str, Any]:
    chosen = [s for s in scores if s.mode == mode]
    progress = [s for s in chosen if s.final_expected is not None or s.expected]
    expected = sum(s.expected_explicit for s in chosen)
    recovered = sum(s.recovered_explicit for s in chosen)
    return {
        "mode": mode,
        "captures": len(chosen),
        "explicit_updates": expected,
        "explicit_recovered": recovered,
        "explicit_rate": recovered / expected if expected else 1.0,
        "all_updates": sum(s.expected for s in chosen),
        "all_recovered": sum(s.recovered for s in chosen),
        "final_right": sum(s.final_right for s in progress),
        "final_of": len(progress),
        "false_positives": sum(s.false_positives for s in chosen),
        "wrong": sum(s.wrong for s in chosen),
    }


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--corpus", type=Path, default=CORPUS)
    cli.add_argument("--verbose", action="append", default=[],
                     help="print the misses of captures whose name contains this")
    cli.add_argument("--mode", default="stream", choices=["lines", "chunk", "stream"])
    args = cli.parse_args()
    scores = score_all(args.corpus)
    print(f"{'capture':<44} {'mode':<6} {'truth':>5} {'found':>5} {'final':>5} {'FP':>3}")
    for s in scores:
        if s.mode != args.mode:
            continue
        final = "ok" if s.final_right else f"{s.final_got}"
        print(f"{s.name:<44} {s.mode:<6} {s.expected:>5} {s.recovered:>5} {final:>5} "
              f"{s.false_positives:>3}")
        if any(v in s.name for v in args.verbose):
            for miss in s.misses[:40]:
                print(f"    {miss}")
    for mode in ("lines", "chunk", "stream"):
        r = summary(scores, mode)
        print(f"summary {mode:<6}: explicit updates {r['explicit_recovered']}/"
              f"{r['explicit_updates']} ({r['explicit_rate']:.1%}), all "
              f"{r['all_recovered']}/{r['all_updates']}, final right {r['final_right']}/"
              f"{r['final_of']}, false positives {r['false_positives']}, wrong {r['wrong']}")


if __name__ == "__main__":
    main()
