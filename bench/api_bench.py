"""The progress endpoint under load, against a bare FastAPI endpoint, in the same run.

Starts ``morag-jobs serve`` (one worker process) on a fresh PostgreSQL database and a
bare FastAPI app whose PUT does nothing (same uvicorn, one process), both on 127.0.0.1,
and drives each with the same load: ``--clients`` concurrent clients, each with its own
job and worker key, sending progress PUTs back to back (keep-alive) for ``--seconds``
or ``--requests`` each, whichever ends first. Prints requests/s, p50/p99 latency of
both and their ratio, then checks the job table: every job holds its last report.

Two load shapes: ``saturate`` (each client sends its next request as soon as the last
is answered: the throughput figure) and ``paced`` (each client sends one report every
``--pace`` seconds, as remote workers do: the latency at a sustainable rate).

    python bench/api_bench.py [--clients 200] [--seconds 10] [--requests 100000]
        [--pace 0.25] [--write-interval 0.5] [--client raw|httpx]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

The machine has 2 cores: each server runs with 1 worker process; the load generator
and PostgreSQL share the other core. The load generator speaks HTTP/1.1 over asyncio
streams (``--client raw``, the default) because httpx itself needs more CPU per request
than the servers it measures; ``--client httpx`` uses ``httpx.AsyncClient``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy

from morag_jobs.api.auth import ApiKeys
from morag_jobs.logs import configure_logging
from morag_jobs.store import JobStore, upgrade_database

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
Send = Callable[[str, bytes, str], Awaitable[int]]


# -- the bare server -------------------------------------------------------------------------


def bare_app() -> object:
    """A FastAPI app whose PUT reads nothing and does nothing: the ceiling."""
    from fastapi import FastAPI  # noqa: PLC0415 (only the bare server process needs it)

    app = FastAPI()

    @app.put("/api/v1/remote-jobs/{job_id}/progress", status_code=202)
    async def progress(job_id: str) -> dict[str, str]:
        return {"job_id": job_id, "outcome": "queued"}

    return app


def serve_bare(port: int) -> None:
    import uvicorn  # noqa: PLC0415 (as above)

    uvicorn.run(bare_app(), host=HOST, port=port, access_log=False, log_level="warning")  # type: ignore[arg-type]


# -- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return f"{self.name:<26} no successful requests; errors {self.errors}"
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        return (f"{self.name:<26} {len(lat) / self.seconds:9.0f} req/s   p50 {p50:7.2f} ms   "
                f"p99 {p99:7.2f} ms   mean {statistics.fmean(lat) * 1000:6.2f} ms   "
                f"requests {len(lat)}   errors {sum(self.errors.values())}")

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def body_for(client: int, sequence: int) -> bytes:
    return json.dumps({
        "percentage": min(99.0, (sequence % 1_000_000) * 0.0001), "message": f"chunk {sequence}",
        "timestamp": datetime.now(UTC).isoformat(), "sequence": sequence,
    }).encode()


async def raw_connection(port: int) -> Send:
    """One keep-alive HTTP/1.1 connection: ``send(path, body, key) -> status``."""
    reader, writer = await asyncio.open_connection(HOST, port)

    async def send(path: str, body: bytes, key: str) -> int:
        writer.write(
            f"PUT {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        return status

    return send


async def httpx_connection(port: int) -> Send:
    client = httpx.AsyncClient(base_url=f"http://{HOST}:{port}",
                               limits=httpx.Limits(max_connections=1))

    async def send(path: str, body: bytes, key: str) -> int:
        response = await client.put(path, content=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        return response.status_code

    return send


async def drive(
    name: str, port: int, jobs: list[tuple[str, str]], *, seconds: float, requests: int,
    pace: float | None, client: str, base: int = 0,
) -> Load:
    """``len(jobs)`` clients, one connection each, for ``seconds`` or ``requests`` each."""
    load = Load(name)
    connect = raw_connection if client == "raw" else httpx_connection
    sends = await asyncio.gather(*(connect(port) for _ in jobs))
    start = time.perf_counter()
    deadline = start + seconds

    async def one(index: int, send: Send) -> None:
        job_id, key = jobs[index]
        path = f"/api/v1/remote-jobs/{job_id}/progress"
        next_at = time.perf_counter() + (pace or 0) * index / len(jobs)
        for sequence in range(1, requests + 1):
            if pace:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += pace
            if time.perf_counter() >= deadline:
                return
            sent = time.perf_counter()
            try:
                status = await send(path, body_for(index, base + sequence), key)
            except (OSError, asyncio.IncompleteReadError, httpx.HTTPError) as error:
                load.errors[type(error).__name__] = load.errors.get(type(error).__name__, 0) + 1
                return
            if status in (200, 202):
                load.latencies.append(time.perf_counter() - sent)
            else:
                load.errors[str(status)] = load.errors.get(str(status), 0) + 1

    await asyncio.gather(*(one(i, send) for i, send in enumerate(sends)))
    load.seconds = time.perf_counter() - start
    return load


# -- servers and the database ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, path: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {process.returncode}")
        try:
            httpx.get(f"http://{HOST}:{port}{path}", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not answer in 30 s")


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def fresh_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"morag_api_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def prepare(url: str, clients: int) -> list[tuple[str, str]]:
    """One job per client, assigned to the client's worker, and that worker's key."""
    upgrade_database(url)
    store = JobStore(url)
    keys = ApiKeys(store)
    jobs = []
    for n in range(clients):
        job = store.create_job(name=f"bench-{n}", job_type="bench", worker_id=f"w{n}")
        jobs.append((job.id, keys.create("worker", f"w{n}", "api bench")[1]))
    store.close()
    return jobs


def check(url: str, jobs: list[tuple[str, str]]) -> str:
    store = JobStore(url)
    rows = [store.require_job(job_id) for job_id, _ in jobs]
    store.close()
    written = sum(row.last_sequence is not None for row in rows)
    return (f"table check: {written}/{len(rows)} jobs hold progress, "
            f"highest sequence {max((r.last_sequence or 0) for r in rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=100_000, help="per client at most")
    parser.add_argument("--pace", type=float, default=0.25,
                        help="seconds between one client's reports in the paced run")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--write-interval", default="0.5",
                        help="the server's coalescing interval (morag-jobs serve's default)")
    parser.add_argument("--postgres",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("ERROR")
    if args.bare_server:
        serve_bare(args.bare_server)
        return

    url, drop = fresh_database(args.postgres)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        jobs = prepare(url, args.clients)
        api_port, bare_port = free_port(), free_port()
        env = {**os.environ, "MORAG_LOG_LEVEL": "ERROR"}
        servers.append(start(["-m", "morag_jobs", "serve", "--host", HOST, "--port",
                              str(api_port), "--workers", "1", "--no-access-log",
                              "--write-interval", args.write_interval, "--database", url],
                             env))
        servers.append(start([__file__, "--bare-server", str(bare_port)]))
        wait_ready(api_port, "/healthz", servers[0])
        wait_ready(bare_port, "/docs", servers[1])
        print(f"{args.clients} clients, {args.seconds:g} s per run, one server process each, "
              f"write interval {args.write_interval} s, client: {args.client}, "
              f"{os.cpu_count()} cores")
        shape = {"seconds": args.seconds, "requests": args.requests, "client": args.client}
        fake = [(job_id, "none") for job_id, _ in jobs]
        asyncio.run(drive("warm-up", api_port, jobs, **{**shape, "seconds": 2.0}, pace=None))
        bare = asyncio.run(drive("bare, saturated", bare_port, fake, **shape, pace=None))
        api = asyncio.run(drive("progress, saturated", api_port, jobs, **shape, pace=None,
                                base=1_000_000))
        bare_paced = asyncio.run(drive(f"bare, every {args.pace:g} s", bare_port, fake,
                                       **shape, pace=args.pace))
        api_paced = asyncio.run(drive(f"progress, every {args.pace:g} s", api_port, jobs,
                                      **shape, pace=args.pace, base=2_000_000))
        for load in (bare, api, bare_paced, api_paced):
            print(load.line())
        print(f"throughput ratio (progress / bare, saturated): {api.rate / bare.rate:.2f}")
        time.sleep(1.5)  # the coalesced writes land within the write interval
        print(check(url, jobs))
    finally:
        for server in servers:
            stop(server)
        drop()


if __name__ == "__main__":
    main()
