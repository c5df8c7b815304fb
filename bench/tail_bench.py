"""``tail`` under attack: a rotation storm, and SIGKILL restarts.

Storm: a writer appends 4,000 numbered lines over about 4 s and renames the file away
every 100 ms (logrotate's numbered scheme, 9 kept: app.log.1 ... app.log.9), while a
``LogFollower`` looks every 250 ms, so two or three files come and go between two
looks. Prints the lines never seen and the lines seen more than once, against a
baseline of the same writer without rotation, run in the same process.

Kills: 6,000 lines, each naming a job of its own, are followed into a SQLite job table
with a checkpoint, and the follower is SIGKILLed and restarted over and over: first
``morag-jobs tail`` killed at random moments while the lines arrive, then a follower
killed right after its k-th job write (k random), the moment a checkpoint written only
after the write does not yet cover. Each job's history rows say how often its line was
applied: none is a line lost, two or more a line re-applied.

    python bench/tail_bench.py [--lines 4000] [--rotate-every 0.1] [--poll 0.25]
        [--kill-lines 6000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import structlog

from morag_jobs.follow import LogFollower
from morag_jobs.store import JobStore

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The tests' own rotation and victim process (imported once the repository is on the path).
from tests.test_follow_rotation import rotate_numbered  # noqa: E402
from tests.test_follow_sigkill import FOLLOW_UNTIL_KILLED  # noqa: E402

KEEP = 9
BATCH = 500
MAX_KILLS = 5


@dataclass
class Storm:
    label: str
    lines: int
    lost: int
    repeated: int
    rotations: int
    seconds: float


@dataclass
class Kills:
    label: str
    lines: int
    kills: int
    lost: int
    reapplied: int
    extra: int


def progress_line(i: int, total: int) -> str:
    return f"Processing file {i} of {total}\n"


def storm(directory: Path, lines: int, rotate_every: float | None, poll: float) -> Storm:
    """Write ``lines`` over about a millisecond each, rotating every ``rotate_every`` s."""
    directory.mkdir()
    path = directory / "worker.log"
    path.write_text("")
    follower = LogFollower(path, from_start=True, poll_interval=poll)
    seen: Counter[str] = Counter()
    stop = threading.Event()

    def follow() -> None:
        for followed in follower.follow(stop):
            seen[followed.event.message] += 1

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    started = last = time.monotonic()
    for i in range(1, lines + 1):
        with path.open("a") as file:
            file.write(progress_line(i, lines))
        if rotate_every is not None and time.monotonic() - last >= rotate_every:
            rotate_numbered(path, keep=KEEP)
            last = time.monotonic()
        time.sleep(0.001)
    deadline = time.monotonic() + 10 * poll
    while follower.stats.lines < lines and time.monotonic() < deadline:
        time.sleep(poll / 5)
    stop.set()
    reader.join()
    follower.close()
    expected = [progress_line(i, lines).strip() for i in range(1, lines + 1)]
    return Storm("rotation storm" if rotate_every else "no rotation (baseline)", lines,
                 sum(1 for message in expected if not seen[message]),
                 sum(n - 1 for n in seen.values() if n > 1), follower.stats.rotations,
                 time.monotonic() - started)


def job_line(i: int) -> str:
    return json.dumps({"job_id": f"job-{i:05d}", "percent": 100, "message": f"line {i}"}) + "\n"


def applications(url: str, lines: int) -> list[int]:
    """How many history rows each line's job has: how often the line was applied."""
    with JobStore(url) as store:
        return [sum(1 for row in store.history(f"job-{i:05d}") if row.kind == "progress")
                for i in range(1, lines + 1)]


def prepare(directory: Path, lines: int) -> tuple[str, Path, Path]:
    directory.mkdir()
    url = f"sqlite:///{directory / 'jobs.db'}"
    with JobStore(url, create_tables=True) as store:
        for i in range(1, lines + 1):
            store.create_job(job_id=f"job-{i:05d}")
    log = directory / "worker.log"
    log.write_text("")
    return url, log, directory / "tail.checkpoint"


def tally(label: str, url: str, lines: int, kills: int) -> Kills:
    counts = applications(url, lines)
    return Kills(label, lines, kills, counts.count(0), sum(1 for n in counts if n > 1),
                 sum(n - 1 for n in counts if n > 1))


def kill_tail_at_random(directory: Path, lines: int, rng: random.Random) -> Kills:
    """``morag-jobs tail`` SIGKILLed 1 to 2.5 s after each start while lines arrive."""
    url, log, checkpoint = prepare(directory, lines)
    command = [sys.executable, "-m", "morag_jobs", "tail", str(log), "--from-start",
               "--trust-line-ids", "--checkpoint", str(checkpoint), "--database", url,
               "--interval", "0.05"]
    written = kills = 0
    while written < lines:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        until = time.monotonic() + rng.uniform(1.0, 2.5)
        while time.monotonic() < until and written < lines:
            more = min(rng.randint(2, 5), lines - written)
            with log.open("a") as file:
                file.writelines(job_line(i) for i in range(written + 1, written + more + 1))
            written += more
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    subprocess.run([*command, "--max-seconds", "5"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tally("tail killed at random moments", url, lines, kills)


def kill_after_writes(directory: Path, lines: int, rng: random.Random) -> Kills:
    """A follower SIGKILLed right after its k-th committed job write, batch after batch.

    Up to ``MAX_KILLS`` kills per batch, then a run left to finish it: a follower that
    re-applies its whole batch after each kill would otherwise never get through.
    """
    url, log, checkpoint = prepare(directory, lines)
    kills = 0
    for first in range(1, lines + 1, BATCH):
        with log.open("a") as file:
            file.writelines(job_line(i) for i in range(first, min(first + BATCH, lines + 1)))
        for attempt in range(MAX_KILLS + 1):
            die_after = rng.randint(1, BATCH) if attempt < MAX_KILLS else 0
            run = subprocess.run(
                [sys.executable, "-c", FOLLOW_UNTIL_KILLED, url, str(log), str(checkpoint),
                 str(die_after)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                check=False)
            if run.returncode == 0:
                break
            if run.returncode != -signal.SIGKILL:
                raise SystemExit(f"the follower failed: {run.stderr}")
            kills += 1
    return tally("killed right after a job write", url, lines, kills)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--lines", type=int, default=4000)
    cli.add_argument("--rotate-every", type=float, default=0.1)
    cli.add_argument("--poll", type=float, default=0.25)
    cli.add_argument("--kill-lines", type=int, default=6000)
    cli.add_argument("--seed", type=int, default=1)
    args = cli.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        storms = [storm(root / "baseline", args.lines, None, args.poll),
                  storm(root / "storm", args.lines, args.rotate_every, args.poll)]
        kills = [kill_tail_at_random(root / "random", args.kill_lines, rng),
                 kill_after_writes(root / "after-write", args.kill_lines, rng)]
    print(f"rotation every {args.rotate_every}s ({KEEP} kept), a look every {args.poll}s")
    for s in storms:
        print(f"{s.label:>28}: {s.lines:,} lines, {s.lost:,} lost, {s.repeated:,} seen twice "
              f"or more; {s.rotations} rotations followed in {s.seconds:.1f}s")
    print(f"SIGKILL and restart from the checkpoint, seed {args.seed}")
    for k in kills:
        print(f"{k.label:>28}: {k.lines:,} lines, {k.kills} kills, {k.lost:,} lost, "
              f"{k.reapplied:,} re-applied ({k.extra:,} extra applications)")
    if any(s.lost or s.repeated for s in storms) or any(k.lost or k.reapplied for k in kills):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
