"""Generate a realistic mixed Celery worker log for the parser benchmark.

The mix (by line): about 70% ordinary Celery task lines, 10% structlog JSON lines
without progress, 8% progress lines in the seed's six formats, 6% tqdm bars and
6% lines that mention a percentage but are not progress (CPU, memory, accuracy...).
The generator is seeded, so every run measures the same log.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

ORDINARY = [
    "Received chunk batch from store",
    "Loaded {n} tokens from cache in 0.{n}s",
    "Embedding model ready on cpu",
    "Wrote {n} rows to table documents",
    "Connection pool size={n} in use={m}",
    "Retrying request to http://search:9200/index/_bulk (attempt {m})",
    "Task accepted: 3c1e-{n} pid:{n}",
    "Skipping empty page {n}",
    "Language detected: en (confidence 0.9{m})",
    "Opened /data/in/{n}/talk.mp3 (44100 Hz, 2 channels)",
]
SEED_FORMATS = [
    "Processing progress: Audio processing: Initializing ({p}%)",
    "Processing... {p}%",
    "Progress: {p}% - Converting video",
    "Stage: transcription ({p}%)",
    "Audio processing: {p}% complete",
    "[{p}%] Processing audio content",
]
NOT_PROGRESS = [
    "CPU usage {p}%",
    "Memory usage at {p}% of limit",
    "Model accuracy: {p}.5%",
    "Disk /var is {p}% full",
    "Discount of {p}% applied",
    "GET /files/a%20b{n}.pdf 200",
]


def lines(count: int, seed: int = 7) -> Iterator[str]:
    rng = random.Random(seed)
    task_ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(16)]
    for i in range(count):
        second, millis = divmod(i, 1000)
        stamp = f"2026-11-22 12:{second // 60 % 60:02d}:{second % 60:02d},{millis:03d}"
        worker = f"ForkPoolWorker-{i % 4 + 1}"
        prefix = f"[{stamp}: INFO/{worker}] ingest.tasks.process[{task_ids[i % 16]}]: "
        n, m, p = rng.randrange(10_000), rng.randrange(10), rng.randrange(101)
        roll = rng.random()
        if roll < 0.70:
            yield prefix + rng.choice(ORDINARY).format(n=n, m=m)
        elif roll < 0.80:
            stamp = f"2026-11-22T12:00:{i % 60:02d}.{n:06d}Z"
            yield json.dumps({"event": "Cached embedding", "doc_id": n, "level": "info",
                              "logger": "ingest.embed", "timestamp": stamp})
        elif roll < 0.88:
            yield prefix + rng.choice(SEED_FORMATS).format(p=p)
        elif roll < 0.94:
            bar = "█" * (p // 10) + " " * (10 - p // 10)
            yield prefix + f"Transcribing: {p:3d}%|{bar}| {p * 10}/1000 [00:{m}1<00:12, 45.00it/s]"
        else:
            yield prefix + rng.choice(NOT_PROGRESS).format(p=p, n=n)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("output", type=Path)
    cli.add_argument("--lines", type=int, default=200_000)
    args = cli.parse_args()
    with args.output.open("w", encoding="utf-8") as out:
        for line in lines(args.lines):
            out.write(line + "\n")


if __name__ == "__main__":
    main()
