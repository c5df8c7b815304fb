"""Parser throughput on a realistic mixed worker log, against a bare line loop.

Prints lines/s (median of several runs) for ``parse_line`` over every line, for
``parse_chunk`` over the whole file, for the original MoRAG approach (six regexes
tried in turn and ``json.loads`` on every line, reimplemented here as the baseline
the project replaced) and for a bare ``for line in f`` loop, all in the same run.

    python bench/parser_bench.py [--lines 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_worker_log import lines as generate

from morag_jobs import ProgressEventParser

MORAG_ORIGINAL = [
    re.compile(r"Processing progress: (.+?) \((\d+)%\)"),
    re.compile(r"(\w+)\.\.\. (\d+)%"),
    re.compile(r"Progress: (\d+)% - (.+)"),
    re.compile(r"Stage: (\w+) \((\d+)%\)"),
    re.compile(r"(.+?): (\d+)% complete"),
    re.compile(r"\[(\d+)%\] (.+)"),
]


def original_parse(line: str) -> object:
    """The original MoRAG parser's shape: try JSON on every line, then six regexes."""
    try:
        data = json.loads(line)
        line = data.get("event", "") if isinstance(data, dict) else line
    except ValueError:
        pass
    for pattern in MORAG_ORIGINAL:
        match = pattern.search(line)
        if match:
            return match.groups()
    return None


def median_seconds(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--lines", type=int, default=200_000)
    cli.add_argument("--repeat", type=int, default=5)
    args = cli.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "worker.log"
        path.write_text("\n".join(generate(args.lines)) + "\n", encoding="utf-8")
        text = path.read_text(encoding="utf-8")
        size_mb = len(text.encode()) / 1e6

        def bare() -> int:
            count = 0
            with path.open(encoding="utf-8") as handle:
                for _line in handle:
                    count += 1
            return count

        def per_line() -> int:
            parser = ProgressEventParser(use_environment=False)
            with path.open(encoding="utf-8") as handle:
                return sum(1 for line in handle if parser.parse_line(line) is not None)

        def chunk() -> int:
            parser = ProgressEventParser(use_environment=False)
            with path.open(encoding="utf-8") as handle:
                return len(parser.parse_chunk(handle.read()))

        def original() -> int:
            with path.open(encoding="utf-8") as handle:
                return sum(1 for line in handle if original_parse(line) is not None)

        results = {}
        for name, run in [("bare for-line loop", bare), ("parse_chunk", chunk),
                          ("parse_line", per_line), ("original MoRAG parser", original)]:
            repeat = 1 if name == "original MoRAG parser" else args.repeat  # it takes ~25 s
            seconds, found = median_seconds(run, repeat)
            results[name] = (args.lines / seconds, found)

    print(f"log: {args.lines} lines, {size_mb:.1f} MB; median of {args.repeat} runs")
    base = results["bare for-line loop"][0]
    for name, (rate, found) in results.items():
        print(f"{name:>24}: {rate:>12,.0f} lines/s  {base / rate:6.1f}x bare loop time"
              f"  ({found} {'events' if name != 'bare for-line loop' else 'lines'})")
    chunk_events, line_events = results["parse_chunk"][1], results["parse_line"][1]
    if chunk_events != line_events:
        raise SystemExit(f"parse_chunk found {chunk_events} events, parse_line {line_events}")


if __name__ == "__main__":
    main()
