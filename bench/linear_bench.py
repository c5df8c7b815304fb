"""Every shipped expression, and the parser and log tap, on hostile lines of 100 KB and 1 MB.

For each expression: the worst time over the adversarial lines (``morag_jobs.linearity``:
whitespace, digit, '%', '|', bracket and separator runs after typical heads) at each
length, and the growth for 10x the input (linear: about 10x; quadratic: about 100x). The
baseline, in the same run, is a plain scan of the same lines (``str.count``), so the
figures say how many scans of the line each expression costs.

    python bench/linear_bench.py [--short 100000] [--long 1000000] [--heads 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from morag_jobs import ProgressEventParser, ProgressStream
from morag_jobs.linearity import HEADS, adversarial
from morag_jobs.packs import builtin_pack_dir, load_packs


def worst(run: Callable[[str], object], lines: list[str]) -> float:
    times = []
    for line in lines:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            run(line)
            runs.append(time.perf_counter() - start)
        times.append(statistics.median(runs))
    return max(times)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--short", type=int, default=100_000)
    options.add_argument("--long", type=int, default=1_000_000)
    options.add_argument("--heads", type=int, default=4, help="how many typical heads")
    args = options.parse_args()
    heads = HEADS[: args.heads]
    short = list(adversarial(args.short, heads))
    long = list(adversarial(args.long, heads))
    packs = load_packs([builtin_pack_dir()])
    runs: list[tuple[str, Callable[[str], object]]] = [
        ("baseline: str.count", lambda line: line.count("\0"))]
    for pattern in packs.patterns:
        runs.append((f"pattern {pattern.name}", pattern.regex.search))
    for prefix in packs.prefixes:
        runs.append((f"prefix {prefix.name}", prefix.regex.search))
    for context in packs.contexts:
        runs.append((f"context {context.name}", context.regex.search))
    for cue in packs.recogniser.cues:
        runs.append((f"cue {cue.name}", cue.regex.search))
    parser = ProgressEventParser(use_environment=False)
    runs.append(("parse_line", parser.parse_line))
    runs.append(("log tap (ProgressStream.feed_line)",
                 lambda line: ProgressStream(parser).feed_line(line)))
    base_long = worst(runs[0][1], long)
    print(f"{len(short)} hostile lines per length; {args.short:,} and {args.long:,} chars; "
          "worst line, median of 3")
    print(f"{'expression':<48} {'short ms':>9} {'long ms':>9} {'growth':>7} {'x scan':>8}")
    growths = []
    for name, run in runs:
        small, big = worst(run, short), worst(run, long)
        growth = big / max(small, 1e-6)
        if not name.startswith("baseline"):
            growths.append(growth)
        print(f"{name[:48]:<48} {small * 1e3:9.2f} {big * 1e3:9.2f} {growth:6.1f}x "
              f"{big / base_long:7.0f}x")
    print(f"worst growth for {args.long // args.short}x the input: {max(growths):.1f}x "
          f"(median {statistics.median(growths):.1f}x)")


if __name__ == "__main__":
    main()
