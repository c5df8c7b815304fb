"""What open SSE streams cost the rest of the API, against the same server with none.

Starts ``morag-jobs serve`` (one worker process) on a fresh PostgreSQL database and
measures, in rounds, three shapes of the same run: no open streams; ``--streams`` job
streams spread over ``--keys`` admin keys (``--streams / --keys`` each, within the
per-key limit); and ``--streams`` streams asked for on one key (all but the limit are
refused with 429). Each run drives ``--clients`` remote workers sending progress PUTs
back to back (as ``api_bench.py``'s saturated load) while one probe asks for
``/healthz`` every 50 ms. Prints, per shape, the medians over the rounds of PUT
requests/s, of the probe's median latency and of the server's CPU time per PUT, each
with the median of its per-round ratio to the run without streams; then the server's
CPU with the streams open and no other load (the cost of a stream that only waits).

Each stream watches one of the jobs the workers report on (``--watch busy``, the
default: every coalesced write reaches its watchers), a job nobody touches (``--watch
quiet``: the streams only poll), or every job (``--watch all``: ``/api/v1/stream``, the
dashboard's stream).

    python bench/stream_bench.py [--streams 200] [--keys 25] [--clients 50]
        [--seconds 8] [--rounds 3] [--watch busy|quiet|all]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

``--fanout``: the one database poll per server process as streams grow. 0, 1, 100 and
1,000 streams held by one other process (``httpx.AsyncClient``), each on one job (``--shape
job``) or one user's jobs (``user``: ``/api/v1/stream``), while ``--jobs`` jobs are written
every ``--pace`` s (``?wait=true``). Per count: the server's statements/s (counted on its
engine), PostgreSQL's transactions and rows returned/s (``pg_stat_database``), the delay
from each change's commit (its PUT answered) to its arrival at each stream on it, the
server's CPU; then saturated PUT throughput with the most streams open against none. The
server is ``create_app`` under uvicorn as ``morag-jobs serve --workers 1`` runs it, but
with ``max_streams`` past 1,000 (``serve`` has no option for it) and a statement counter;
the database a fresh ``morag_bench_<random>``, dropped at the end.

    python bench/stream_bench.py --fanout [--counts 0,1,100,1000] [--jobs 200]
        [--pace 1.0] [--seconds 15] [--shape job,user] [--rounds 2] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import sqlalchemy
from api_bench import (
    HOST,
    REPO,
    drive,
    free_port,
    fresh_database,
    prepare,
    raw_connection,
    start,
    stop,
    wait_ready,
)

from morag_jobs.api import watch
from morag_jobs.api.auth import ApiKeys
from morag_jobs.logs import configure_logging
from morag_jobs.store import JobStore, upgrade_database

# -- streams ---------------------------------------------------------------------------------


@dataclass
class Streams:
    """Open SSE connections, each drained by a task so the server never blocks on them."""

    statuses: Counter[int] = field(default_factory=Counter)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    drains: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        for task in self.drains:
            task.cancel()
        await asyncio.gather(*self.drains, return_exceptions=True)


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def open_streams(port: int, targets: list[tuple[str, str]]) -> Streams:
    """``GET`` each (stream path, key); refused ones are closed."""
    streams = Streams()

    async def one(path: str, key: str) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n"
                     f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
                     .encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        streams.statuses[status] += 1
        if status == 200:
            streams.writers.append(writer)
            streams.drains.append(asyncio.create_task(_drain(reader)))
        else:
            writer.close()

    await asyncio.gather(*(one(path, key) for path, key in targets))
    return streams


# -- one run ---------------------------------------------------------------------------------


async def probe_health(port: int, until: float) -> list[float]:
    """``GET /healthz`` every 50 ms on one keep-alive connection: the latencies."""
    reader, writer = await asyncio.open_connection(HOST, port)
    latencies = []
    while time.perf_counter() < until:
        sent = time.perf_counter()
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - sent)
        await asyncio.sleep(0.05)
    writer.close()
    return latencies


@dataclass
class Run:
    shape: str
    round: int
    rate: float
    health_ms: float
    cpu_ms: float
    """The server's CPU time per PUT answered (streams and all): the least noisy figure."""
    statuses: Counter[int]


async def run(shape: str, round_: int, server: tuple[int, int], jobs: list[tuple[str, str]],
              streams_for: list[tuple[str, str]], *, seconds: float, base: int) -> Run:
    """PUT load and the health probe, with ``streams_for`` streams open throughout."""
    port, pid = server
    streams = await open_streams(port, streams_for)
    await asyncio.sleep(1.0)  # every stream past its first snapshot
    cpu = cpu_seconds(pid)
    probe = asyncio.create_task(probe_health(port, time.perf_counter() + seconds))
    load = await drive(shape, port, jobs, seconds=seconds, requests=10**9, pace=None,
                       client="raw", base=base)
    cpu = cpu_seconds(pid) - cpu
    health = await probe
    await streams.close()
    await asyncio.sleep(1.0)  # the server notices the closed streams
    if load.errors:
        print(f"  {shape}: PUT errors {load.errors}")
    return Run(shape, round_, load.rate, statistics.median(health) * 1000,
               cpu * 1000 / max(1, len(load.latencies)), streams.statuses)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_cpu(port: int, pid: int, streams_for: list[tuple[str, str]],
                   seconds: float) -> float:
    """The server's CPU share (of one core) with these streams open and nothing else."""
    streams = await open_streams(port, streams_for)
    await asyncio.sleep(1.0)
    before, started = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    share = (cpu_seconds(pid) - before) / (time.perf_counter() - started)
    await streams.close()
    await asyncio.sleep(1.0)
    return share


# -- main ------------------------------------------------------------------------------------


def admin_keys(url: str, count: int) -> list[str]:
    store = JobStore(url)
    keys = ApiKeys(store)
    made = [keys.create("admin", label="stream bench")[1] for _ in range(count)]
    store.close()
    return made


def quiet_job(url: str) -> str:
    store = JobStore(url)
    job_id = store.create_job(name="watched", job_type="bench").id
    store.close()
    return job_id


def stream_path(watch: str, quiet: str, busy: str) -> str:
    if watch == "all":
        return "/api/v1/stream"
    return f"/api/v1/jobs/{quiet if watch == 'quiet' else busy}/stream"


def report(runs: list[Run]) -> None:
    """Per shape: medians over the rounds, and in brackets the median of each round's
    ratio to that round's run without streams (the machine's drift cancels out)."""
    baseline = {r.round: r for r in runs if r.shape == runs[0].shape}

    def figure(mine: list[Run], value: Callable[[Run], float]) -> str:
        ratio = statistics.median(value(r) / value(baseline[r.round]) for r in mine)
        return f"{statistics.median(value(r) for r in mine):7.2f} ({ratio:4.2f})"

    for shape in dict.fromkeys(r.shape for r in runs):
        mine = [r for r in runs if r.shape == shape]
        statuses = dict(sorted(mine[-1].statuses.items())) or "-"
        print(f"{shape:<27} PUT req/s {figure(mine, lambda r: r.rate)}   /healthz p50 ms "
              f"{figure(mine, lambda r: r.health_ms)}   server CPU ms per PUT "
              f"{figure(mine, lambda r: r.cpu_ms)}   streams answered {statuses}")
        print(f"{'':<27} PUT req/s by round {[round(r.rate) for r in mine]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--keys", type=int, default=25)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--watch", choices=["busy", "quiet", "all"], default="busy")
    parser.add_argument("--postgres",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--fanout", action="store_true")
    parser.add_argument("--counts", default="0,1,100,1000")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--pace", type=float, default=1.0)
    parser.add_argument("--shape", default="job,user")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("ERROR")
    if args.serve:
        serve_counted(int(args.serve[0]), args.serve[1], int(args.serve[2]))
    elif args.hold:
        asyncio.run(hold(args.hold, json.loads(sys.stdin.readline())))
    elif args.fanout:
        fanout(args)
    else:
        compare(args)


def compare(args: argparse.Namespace) -> None:
    """The first measurement: what open streams cost PUT throughput and ``/healthz``."""

    url, drop = fresh_database(args.postgres)
    server = None
    try:
        jobs = prepare(url, args.clients)
        keys = admin_keys(url, args.keys)
        quiet = quiet_job(url)
        paths = [stream_path(args.watch, quiet, jobs[n % len(jobs)][0])
                 for n in range(args.streams)]
        spread = [(path, keys[n % len(keys)]) for n, path in enumerate(paths)]
        one_key = [(path, keys[0]) for path in paths]
        port = free_port()
        server = start(["-m", "morag_jobs", "serve", "--host", HOST, "--port", str(port),
                        "--workers", "1", "--no-access-log", "--database", url],
                       {**os.environ, "MORAG_LOG_LEVEL": "ERROR"})
        wait_ready(port, "/healthz", server)
        print(f"{args.clients} PUT clients, {args.seconds:g} s per run, {args.rounds} rounds, "
              f"streams watch {args.watch} jobs, one server process, {os.cpu_count()} cores")
        shapes = [("no streams", []),
                  (f"{args.streams} streams, {args.keys} keys", spread),
                  (f"{args.streams} streams, one key", one_key)]
        asyncio.run(drive("warm-up", port, jobs, seconds=2.0, requests=10**9, pace=None,
                          client="raw"))
        runs = []
        for round_ in range(args.rounds):
            for n, (shape, targets) in enumerate(shapes):
                base = (round_ * len(shapes) + n + 1) * 1_000_000
                runs.append(asyncio.run(run(shape, round_, (port, server.pid), jobs, targets,
                                            seconds=args.seconds, base=base)))
        report(runs)
        idle = [(shape, asyncio.run(idle_cpu(port, server.pid, targets, 5.0)))
                for shape, targets in shapes[:2]]
        print("server CPU with no other load: " + ", ".join(
            f"{shape} {share:.1%} of a core" for shape, share in idle))
    finally:
        if server is not None:
            stop(server)
        drop()


# -- --fanout: the shared poll as streams grow ---------------------------------------------------



def serve_counted(port: int, url: str, max_streams: int) -> None:
    """The API as ``morag-jobs serve --workers 1 --no-access-log`` runs it, counting the
    statements its engine runs (``GET /bench/statements``)."""
    import uvicorn  # noqa: PLC0415 (only the server process needs these)
    from fastapi import APIRouter  # noqa: PLC0415

    from morag_jobs.api import create_app  # noqa: PLC0415

    app = create_app(database_url=url, max_streams=max_streams, freeze_gc=True)
    counts: Counter[str] = Counter()
    polling = threading.local()
    watcher = getattr(app.state.morag, "watcher", None)  # None: before the one poll

    def count(*_: object) -> None:
        counts["poll" if getattr(polling, "on", False) else "other"] += 1

    def timed(*args: object) -> object:
        started, polling.on = time.perf_counter(), True
        try:
            return read(*args)
        finally:
            polling.on = False
            counts["poll_ms"] += round((time.perf_counter() - started) * 1000)

    if watcher is not None:
        read, watcher._read = watcher._read, timed
    sqlalchemy.event.listen(app.state.morag.store.engine, "before_cursor_execute", count)
    router = APIRouter()
    router.add_api_route("/bench/statements", methods=["GET"], endpoint=lambda: {
        **counts, "polls": watcher.polls if watcher is not None else 0})
    app.include_router(router)
    uvicorn.run(app, host=HOST, port=port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=3)


async def hold(port: int, targets: list[list[str]]) -> None:
    """Hold one stream per (path, key) on one ``httpx.AsyncClient``; print ``ready`` once
    each has answered, then on a line on stdin each arrival of a change (job id, sequence,
    monotonic time) as JSON."""
    arrivals: list[tuple[str, int, float]] = []
    statuses: Counter[int] = Counter()
    answered = asyncio.Event()

    async def one(path: str, key: str, client: httpx.AsyncClient) -> None:
        wanted = "history" if path.startswith("/api/v1/jobs/") else "job"
        kind = ""
        async with client.stream("GET", path, params={"access_token": key}) as response:
            statuses[response.status_code] += 1
            if statuses.total() == len(targets):
                answered.set()
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif kind == wanted and line.startswith("data: "):
                    data = json.loads(line[6:])
                    text = data["message"] if wanted == "history" else data["summary"]
                    if text and text.startswith("seq "):
                        arrivals.append((data.get("job_id") or data["id"], int(text[4:]),
                                         time.monotonic()))

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits,
                                 timeout=httpx.Timeout(30, read=None)) as client:
        tasks = [asyncio.create_task(one(path, key, client)) for path, key in targets]
        await asyncio.wait_for(answered.wait(), 120)
        await asyncio.sleep(1.0)  # past every snapshot
        print("ready", json.dumps(statuses), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(arrivals), flush=True)


class Holder:
    """The process holding the streams."""

    def __init__(self, port: int, targets: list[tuple[str, str]]) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--hold", str(port)],
                                        cwd=REPO, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(targets) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"the stream holder failed: {line!r}")
        self.statuses = {int(k): v for k, v in json.loads(line.split(" ", 1)[1]).items()}

    def stop(self) -> list[tuple[str, int, float]]:
        out, _ = self.process.communicate("stop\n", timeout=120)
        return [tuple(item) for item in json.loads(out)]  # type: ignore[misc]


async def move(port: int, jobs: list[tuple[str, str]], seconds: float, pace: float,
               base: int) -> dict[tuple[str, int], float]:
    """Each job written every ``pace`` s (``?wait=true``): each change's commit time."""
    sends = await asyncio.gather(*(raw_connection(port) for _ in jobs))
    commits: dict[tuple[str, int], float] = {}
    deadline = time.monotonic() + seconds

    async def one(index: int) -> None:
        job_id, key = jobs[index]
        at = time.monotonic() + pace * index / len(jobs)
        for seq in range(base + 1, base + 10**6):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            at += pace
            if time.monotonic() >= deadline:
                return
            body = json.dumps({"percentage": seq % 100, "message": f"seq {seq}",
                               "timestamp": datetime.now(UTC).isoformat(), "sequence": seq})
            path = f"/api/v1/remote-jobs/{job_id}/progress?wait=true"
            if await sends[index](path, body.encode(), key) == 200:
                commits[(job_id, seq)] = time.monotonic()

    await asyncio.gather(*(one(i) for i in range(len(jobs))))
    return commits


@dataclass
class Bench:
    """The --fanout run's server and database."""

    args: argparse.Namespace
    admin: sqlalchemy.Engine
    name: str
    port: int
    pid: int
    jobs: list[tuple[str, str, str]]
    """(job id, its worker's key, its owner's user key)"""
    base: int = 0

    def targets(self, shape: str, count: int) -> list[tuple[str, str]]:
        """Stream n on job n % jobs: its job stream, or its owner's ``/api/v1/stream``."""
        return [(f"/api/v1/jobs/{self.jobs[n % len(self.jobs)][0]}/stream" if shape == "job"
                 else "/api/v1/stream", self.jobs[n % len(self.jobs)][2]) for n in range(count)]

    def counters(self) -> list[float]:
        """Server statements (the poll's, all), polls, ms polling, PostgreSQL transactions
        and rows returned, server CPU seconds."""
        with self.admin.connect() as conn:
            xacts, rows = conn.exec_driver_sql(
                "SELECT xact_commit + xact_rollback, tup_returned FROM pg_stat_database "
                "WHERE datname = %(name)s", {"name": self.name}).one()
        got = httpx.get(f"http://{HOST}:{self.port}/bench/statements", timeout=10).json()
        return [got.get("poll", 0), got.get("poll", 0) + got.get("other", 0), got["polls"],
                got.get("poll_ms", 0), int(xacts), int(rows), cpu_seconds(self.pid)]

    def row(self, shape: str, count: int) -> str:
        """One count: held streams while every job moves for ``--seconds``."""
        holder = Holder(self.port, self.targets(shape, count)) if count else None
        before, started = self.counters(), time.monotonic()
        self.base += 10_000_000
        movers = [(job_id, worker) for job_id, worker, _ in self.jobs]
        commits = asyncio.run(move(self.port, movers, self.args.seconds, self.args.pace,
                                   self.base))
        after, elapsed = self.counters(), time.monotonic() - started
        time.sleep(1.0)  # the last changes reach the streams
        arrivals = holder.stop() if holder else []
        delays = [at - commits[(job, seq)] for job, seq, at in arrivals if (job, seq) in commits]
        rate = [(b - a) / elapsed for a, b in zip(before, after, strict=True)]
        poll_ms = rate[3] / rate[2] if rate[2] else float("nan")
        answered = json.dumps(dict(sorted(holder.statuses.items())) if holder else {})
        return (f"{count:>8} {answered:>13} {rate[0]:8.1f} {rate[1]:8.0f} {rate[2]:7.1f} "
                f"{poll_ms:5.0f} ms {rate[4]:8.0f} {rate[5]:8.0f} {len(commits) / elapsed:6.0f}"
                f" {len(delays) / elapsed:8.0f} {percentile(delays, 0.5) * 1000:6.0f} ms "
                f"{percentile(delays, 0.99) * 1000:6.0f} ms {rate[6]:6.0%}")

    def throughput(self, shape: str, most: int) -> str:
        """Saturated PUTs (``--clients`` workers) with ``most`` streams open, and none."""
        busy = [(job_id, worker) for job_id, worker, _ in self.jobs[:self.args.clients]]
        rates: dict[int, list[float]] = {0: [], most: []}
        for _ in range(self.args.rounds):
            for count, mine in rates.items():
                holder = Holder(self.port, self.targets(shape, count)) if count else None
                self.base += 10_000_000
                mine.append(asyncio.run(drive("put", self.port, busy, seconds=8.0,
                                              requests=10**9, pace=None, client="raw",
                                              base=self.base)).rate)
                if holder:
                    holder.stop()
        plain, crowded = (statistics.median(r) for r in rates.values())
        return (f"saturated PUTs ({self.args.clients} workers, 8 s, median of "
                f"{self.args.rounds}): no streams {plain:.0f} req/s, {most} streams "
                f"{crowded:.0f} req/s ({crowded / plain:.2f}); by round "
                f"{ {k: [round(r) for r in v] for k, v in rates.items()} }")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


def fanout_jobs(url: str, count: int) -> list[tuple[str, str, str]]:
    upgrade_database(url)
    store = JobStore(url)
    keys = ApiKeys(store)
    jobs = []
    for n in range(count):
        job = store.create_job(name=f"bench-{n}", job_type="bench", user_id=f"u{n}",
                               worker_id=f"w{n}")
        jobs.append((job.id, keys.create("worker", f"w{n}")[1],
                     keys.create("user", f"u{n}")[1]))
    store.close()
    return jobs


def fanout(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.counts.split(",")]
    admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"morag_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = args.postgres.rsplit("/", 1)[0] + f"/{name}"
    server = None
    try:
        jobs = fanout_jobs(url, args.jobs)
        port, most = free_port(), max(counts)
        server = start([__file__, "--serve", str(port), url, str(most + 100)],
                       {**os.environ, "MORAG_LOG_LEVEL": "ERROR",
                        "MORAG_API_MAX_STREAMS_PER_KEY": str(most + 100)})
        wait_ready(port, "/healthz", server)
        bench = Bench(args, admin, name, port, server.pid, jobs)
        print(f"{args.jobs} jobs, each written every {args.pace:g} s (?wait=true); "
              f"{args.seconds:g} s per count; one server process polling every 0.5 s; "
              f"{os.cpu_count()} cores")
        for shape in args.shape.split(","):
            print(f"\n--shape {shape}: each stream on " + (
                "one job (its job stream)" if shape == "job"
                else "one user's jobs (/api/v1/stream with the user's key)"))
            print(f"{'streams':>8} {'answered':>13} {'poll':>8} {'all':>8} {'polls':>7} "
                  f"{'poll':>8} {'pg xact':>8} {'pg rows':>8} {'PUTs':>6} {'events':>8} "
                  f"{'delay p50':>9} {'p99':>9} {'CPU':>6}\n{'':>22}statements/s{'':>5}/s"
                  f"{'':>6}each{'':>7}/s{'':>7}/s{'':>5}/s{'':>7}/s")
            for count in counts:
                if not count:
                    time.sleep(getattr(watch, "IDLE_SECONDS", 0) + 1)  # the poll has stopped
                print(bench.row(shape, count), flush=True)
            if args.rounds:
                print(bench.throughput(shape, most), flush=True)
    finally:
        if server is not None:
            stop(server)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
