"""What a misbehaving receiver costs the webhook deliverer, against a same-run baseline.

Two figures, each the median of ``--runs`` runs, next to its baseline from the same run:

- memory: one ``WebhookDeliverer.deliver_due()`` in a fresh process (spawned, so the
  figure is the deliverer's alone) against a receiver that answers 500 with a
  ``--error-mb`` body, against one whose 500 says ``tiny``. Prints the process's peak RSS
  (``ru_maxrss``) and the tracemalloc peak of the pass itself;
- throughput: ``--deliveries`` messages to ``--fast`` quick endpoints, delivered by the
  background deliverer, with and without one more endpoint that takes ``--slow-seconds``
  to answer each of its ``--slow-deliveries`` messages (within the deadline). Prints
  deliveries/s to the quick endpoints.

Receivers are ``http.server`` threads on 127.0.0.1 (so the deliverer allows private
addresses); the outbox is ``MORAG_DATABASE_URL`` or a temporary SQLite file::

    python bench/webhook_bench.py [--runs 3] [--error-mb 100] [--deliveries 400]
        [--fast 4] [--slow-seconds 5] [--slow-deliveries 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import delete, func, select

from morag_jobs import settings
from morag_jobs import webhooks as wh
from morag_jobs.logs import configure_logging
from morag_jobs.store import JobStore
from morag_jobs.store.outbox import DELIVERIES

SECRET = wh.generate_secret()
CHUNK = b"E" * 65536


class Receiver(BaseHTTPRequestHandler):
    """``/tiny``: a short 500; ``/huge``: a 500 of ``error_bytes``; ``/slow``: a late 200."""

    error_bytes = 100 * 2**20
    slow_seconds = 5.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        if self.path.startswith("/slow"):
            time.sleep(self.slow_seconds)
        huge = self.path.startswith("/huge")
        self.send_response(500 if huge or self.path.startswith("/tiny") else 200)
        self.send_header("content-length", str(self.error_bytes if huge else 4))
        self.end_headers()
        try:
            if not huge:
                self.wfile.write(b"tiny")
            for _ in range(self.error_bytes // len(CHUNK) if huge else 0):
                self.wfile.write(CHUNK)
        except OSError:
            pass  # the deliverer hung up after the few KB it reads

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def queue(store: JobStore, urls: list[str]) -> None:
    """One due message per URL (fresh rows: the outbox is emptied first)."""
    with store._writing() as connection:  # the bench resets the outbox table
        connection.execute(delete(DELIVERIES))
    for url in urls:
        assert wh.enqueue(store, "completed", store.create_job(webhook_url=url)) == 1


# -- memory ----------------------------------------------------------------------------------


def deliver_once(database: str) -> tuple[float, float]:
    """In a fresh process: one pass; (peak RSS, tracemalloc peak of the pass), in MB."""
    configure_logging("ERROR")
    with JobStore(database) as store:
        deliverer = wh.WebhookDeliverer(store, secret=SECRET, allow_private=True)
        tracemalloc.start()
        attempted = deliverer.deliver_due()
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        deliverer.stop()
    assert attempted == 1, attempted
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, traced / 2**20


def memory(store: JobStore, database: str, base: str, path: str) -> tuple[float, float]:
    queue(store, [f"{base}{path}"])
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        rss, traced = pool.apply(deliver_once, (database,))
    (row,) = wh.list_deliveries(store)
    assert row.response_status == 500 and row.last_error is not None, row
    return rss, traced


# -- throughput ------------------------------------------------------------------------------


def throughput(store: JobStore, bases: list[str], args: argparse.Namespace, slow: bool) -> float:
    """Deliveries/s to the fast endpoints, with or without one slow endpoint among them.

    Each endpoint is a receiver of its own (an endpoint is a scheme and host:port).
    """
    fast = [f"{bases[n % args.fast]}/fast?n={n}" for n in range(args.deliveries)]
    slow_urls = [f"{bases[-1]}/slow?n={n}" for n in range(args.slow_deliveries if slow else 0)]
    queue(store, slow_urls + fast)  # the slow ones first in line
    pending = select(func.count()).select_from(DELIVERIES).where(
        DELIVERIES.c.status != "delivered", DELIVERIES.c.url.notlike("%/slow%"))
    deliverer = wh.WebhookDeliverer(store, secret=SECRET, allow_private=True,
                                    poll_interval=0.01, timeout=args.slow_seconds * 2 + 5)
    started = time.perf_counter()
    deliverer.start()
    try:
        while True:
            with store._reading() as connection:
                if connection.execute(pending).scalar_one() == 0:
                    break
            time.sleep(0.005)
        return args.deliveries / (time.perf_counter() - started)
    finally:
        deliverer.stop()


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--runs", type=int, default=3)
    cli.add_argument("--error-mb", type=int, default=100)
    cli.add_argument("--deliveries", type=int, default=400)
    cli.add_argument("--fast", type=int, default=4)
    cli.add_argument("--slow-seconds", type=float, default=5.0)
    cli.add_argument("--slow-deliveries", type=int, default=4)
    args = cli.parse_args()
    configure_logging("ERROR")
    Receiver.error_bytes = args.error_mb * 2**20
    Receiver.slow_seconds = args.slow_seconds
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as servers:
        bases = [servers.enter_context(receiver()) for _ in range(args.fast + 1)]
        database = os.environ.get("MORAG_DATABASE_URL") or f"sqlite:///{Path(scratch)}/jobs.db"
        with JobStore(database, create_tables=True) as store:
            for _ in range(args.runs):
                for name, path in (("tiny", "/tiny"), ("huge", "/huge")):
                    rss, traced = memory(store, database, bases[0], path)
                    figures.setdefault(f"{name}_rss", []).append(rss)
                    figures.setdefault(f"{name}_traced", []).append(traced)
                for name, slow in (("none_slow", False), ("one_slow", True)):
                    figures.setdefault(name, []).append(throughput(store, bases, args, slow))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    medians["concurrency"] = settings.webhook_concurrency()
    _print(medians, args)


def _print(figures: dict[str, float], args: argparse.Namespace) -> None:
    print(f"python {platform.python_version()}, httpx {httpx.__version__}; "
          f"medians of {args.runs} runs")
    print("deliverer process memory, one pass: peak RSS / tracemalloc peak of the pass")
    print(f"  {'500 with a 4-byte body (baseline)':<44}{figures['tiny_rss']:>8.1f} MB"
          f"{figures['tiny_traced']:>10.2f} MB")
    print(f"  {f'500 with a {args.error_mb} MB body':<44}{figures['huge_rss']:>8.1f} MB"
          f"{figures['huge_traced']:>10.2f} MB")
    print(f"  {'ratio (RSS)':<44}{figures['huge_rss'] / figures['tiny_rss']:>8.2f} x")
    print(f"throughput, {args.deliveries} deliveries to {args.fast} quick endpoints "
          f"(background deliverer, concurrency {figures['concurrency']:g})")
    print(f"  {'no slow endpoint (baseline)':<44}{figures['none_slow']:>8.0f} deliveries/s")
    slow = f"one endpoint answering in {args.slow_seconds:g} s"
    print(f"  {slow:<44}{figures['one_slow']:>8.0f} deliveries/s")
    print(f"  {'ratio':<44}{figures['one_slow'] / figures['none_slow']:>8.2f} x")


if __name__ == "__main__":
    main()
