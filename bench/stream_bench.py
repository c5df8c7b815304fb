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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from api_bench import (
    HOST,
    drive,
    free_port,
    fresh_database,
    prepare,
    start,
    stop,
    wait_ready,
)

from morag_jobs.api.auth import ApiKeys
from morag_jobs.logs import configure_logging
from morag_jobs.store import JobStore

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
    args = parser.parse_args()
    configure_logging("ERROR")

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


if __name__ == "__main__":
    main()
