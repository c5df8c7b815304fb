"""Retention at scale: ``prune`` over 1,000,000 ended jobs on PostgreSQL.

Fills a fresh database (``morag_bench_<random>``, dropped at the end) with bulk SQL
(``INSERT ... SELECT generate_series``): ``--jobs`` ended jobs (FINISHED, FAILED,
CANCELLED, 40 days ago) with ``--history`` history rows and one task mapping each, and
settled webhook deliveries (one per 10 jobs); beside them ``--running`` running jobs
(PENDING, PROCESSING) and ``--families`` running parents with 10 children that ended
40 days ago, all with history: none of those may be touched. Ids are md5 hex, like the
uuid4 hex ids jobs get, so running and ended jobs interleave in id order.

Then times a prune that finds nothing (a cutoff before every job: the scan alone, what the
reaper's hourly prune costs most hours), a dry run (the scan and the counts) and the prune,
and prints rows/s, the number of transactions and the longest one, and checks that every
running job, child of a running parent, and their history rows are still there.

    python bench/prune_bench.py [--jobs 1000000] [--history 3] [--running 1000]
        [--families 100] [--batch 5000]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy
from sqlalchemy import event

from morag_jobs.events import utc_now
from morag_jobs.store import JobStore
from morag_jobs.store.prune import PruneResult, prune

CHILDREN = 10

# One statement per table; :now is the run's time, every ended job ended 40 days before it.
FILL = [
    # the ended jobs
    """INSERT INTO jobs (id, name, status, percentage, summary, metadata, created_at,
                         started_at, updated_at, finished_at, version)
       SELECT md5('old' || g), 'old ' || g,
              (ARRAY['FINISHED', 'FAILED', 'CANCELLED'])[1 + g % 3], 100, 'done', '{}',
              :now - interval '41 days', :now - interval '41 days',
              :now - interval '40 days' - (g % 1440) * interval '1 minute',
              :now - interval '40 days' - (g % 1440) * interval '1 minute', 3
       FROM generate_series(1, :jobs) AS g""",
    # the running jobs (half PENDING, half PROCESSING)
    """INSERT INTO jobs (id, name, status, percentage, summary, metadata, created_at,
                         updated_at, version, claim)
       SELECT md5('run' || g), 'running ' || g,
              CASE WHEN g % 2 = 0 THEN 'PENDING' ELSE 'PROCESSING' END, 50, 'half way', '{}',
              :now - interval '60 days', :now, 3, 'celery'
       FROM generate_series(1, :running) AS g""",
    # running parents, each with CHILDREN children that ended long ago
    """INSERT INTO jobs (id, name, status, percentage, summary, metadata, created_at,
                         updated_at, version, children, children_done, children_weight)
       SELECT md5('parent' || g), 'parent ' || g, 'PROCESSING', 90, '9 of 10', '{}',
              :now - interval '60 days', :now, 9, 10, 9, 10
       FROM generate_series(1, :families) AS g""",
    f"""INSERT INTO jobs (id, name, status, percentage, summary, metadata, created_at,
                         updated_at, finished_at, version, parent_id)
       SELECT md5('child' || p || '-' || c), 'child', 'FINISHED', 100, 'done', '{{}}',
              :now - interval '60 days', :now - interval '40 days',
              :now - interval '40 days', 3, md5('parent' || p)
       FROM generate_series(1, :families) AS p, generate_series(1, {CHILDREN}) AS c""",
    # history rows and a task mapping for every job
    """INSERT INTO job_events (job_id, at, percentage, message, status, source, kind)
       SELECT j.id, j.updated_at - n * interval '1 minute', 100.0 * n / :history,
              'step ' || n, j.status, 'worker', 'progress'
       FROM jobs AS j, generate_series(1, :history) AS n""",
    """INSERT INTO job_mappings (kind, key, job_id, created_at)
       SELECT 'task', 'task-' || j.id, j.id, j.created_at FROM jobs AS j""",
    # webhook deliveries: settled long ago (one per 10 ended jobs), and some pending ones
    """INSERT INTO webhook_deliveries (message_id, job_id, event_type, url, payload, status,
                                       attempts, next_attempt_at, created_at, delivered_at)
       SELECT 'msg-' || g, md5('old' || g), 'job.finished', 'https://example.com/hook', '{}',
              CASE WHEN g % 5 = 0 THEN 'failed' ELSE 'delivered' END, 1,
              :now - interval '40 days', :now - interval '40 days',
              CASE WHEN g % 5 = 0 THEN NULL ELSE :now - interval '40 days' END
       FROM generate_series(1, :jobs, 10) AS g""",
    """INSERT INTO webhook_deliveries (message_id, job_id, event_type, url, payload, status,
                                       attempts, next_attempt_at, created_at)
       SELECT 'pending-' || g, md5('run' || g), 'job.finished', 'https://example.com/hook',
              '{}', 'pending', 0, :now - interval '40 days', :now - interval '40 days'
       FROM generate_series(1, :running) AS g""",
]


def fill(store: JobStore, params: dict[str, Any]) -> float:
    start = time.perf_counter()
    with store.engine.begin() as connection:
        for statement in FILL:
            connection.execute(sqlalchemy.text(statement), params)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    return time.perf_counter() - start


def counts(store: JobStore) -> dict[str, int]:
    """Rows per table, and the rows that must survive: running jobs, children of running
    parents, their history."""
    queries = {
        "jobs": "SELECT count(*) FROM jobs",
        "history": "SELECT count(*) FROM job_events",
        "mappings": "SELECT count(*) FROM job_mappings",
        "deliveries": "SELECT count(*) FROM webhook_deliveries",
        "running": "SELECT count(*) FROM jobs WHERE status IN ('PENDING', 'PROCESSING')",
        "kept children": """SELECT count(*) FROM jobs AS c JOIN jobs AS p ON c.parent_id = p.id
                            WHERE p.status IN ('PENDING', 'PROCESSING')""",
        "kept history": """SELECT count(*) FROM job_events AS e JOIN jobs AS j ON e.job_id = j.id
                           WHERE j.status IN ('PENDING', 'PROCESSING')
                              OR j.parent_id IS NOT NULL""",
        "pending deliveries": "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
    }
    with store.engine.connect() as connection:
        return {name: int(connection.scalar(sqlalchemy.text(sql))) for name, sql in
                queries.items()}


@contextmanager
def transactions(engine: sqlalchemy.Engine) -> Iterator[list[float]]:
    """The duration of every transaction committed on ``engine`` during the block."""
    began: dict[int, float] = {}
    spans: list[float] = []

    def begin(connection: Any) -> None:
        began[id(connection)] = time.perf_counter()

    def commit(connection: Any) -> None:
        spans.append(time.perf_counter() - began.pop(id(connection), time.perf_counter()))

    event.listen(engine, "begin", begin)
    event.listen(engine, "commit", commit)
    try:
        yield spans
    finally:
        event.remove(engine, "begin", begin)
        event.remove(engine, "commit", commit)


def run(url: str, args: argparse.Namespace) -> bool:
    store = JobStore(url, migrate=True)
    store.upgrade()
    now = utc_now()
    params = {"now": now, "jobs": args.jobs, "running": args.running,
              "families": args.families, "history": args.history}
    filled = fill(store, params)
    before = counts(store)
    print(f"filled in {filled:.1f}s: " + ", ".join(f"{v:,} {k}" for k, v in before.items()))

    start = time.perf_counter()  # every job is younger than 60 days: nothing qualifies
    nothing = prune(store, now - timedelta(days=60), batch=args.batch)
    idle_seconds = time.perf_counter() - start
    cutoff = now - timedelta(days=30)
    start = time.perf_counter()
    dry = prune(store, cutoff, batch=args.batch, dry_run=True)
    dry_seconds = time.perf_counter() - start
    with transactions(store.engine) as spans:
        start = time.perf_counter()
        done = prune(store, cutoff, batch=args.batch)
        seconds = time.perf_counter() - start
    after = counts(store)
    store.close()

    rows = done.jobs + done.history + done.deliveries
    print(f"nothing to delete (as the reaper's hourly prune finds most hours): {idle_seconds:.1f}s"
          f"{'' if nothing == PruneResult() else f' DELETED {nothing}'}")
    print(f"dry run: {dry.jobs:,} jobs, {dry.history:,} history rows, {dry.deliveries:,} "
          f"deliveries counted in {dry_seconds:.1f}s")
    print(f"prune:   {done.jobs:,} jobs, {done.history:,} history rows, {done.deliveries:,} "
          f"deliveries (+ {before['mappings'] - after['mappings']:,} mappings by cascade) "
          f"in {seconds:.1f}s = {rows / seconds:,.0f} rows/s ({done.jobs / seconds:,.0f} jobs/s)")
    print(f"         {len(spans)} write transactions, the longest {max(spans):.2f}s, "
          f"median {sorted(spans)[len(spans) // 2]:.2f}s (batch {args.batch:,})")
    kept = ("running", "kept children", "kept history", "pending deliveries")
    untouched = all(after[name] == before[name] for name in kept)
    expected = (args.jobs, args.jobs * args.history, len(range(1, args.jobs + 1, 10)))
    complete = (done.jobs, done.history, done.deliveries) == expected == (
        dry.jobs, dry.history, dry.deliveries)
    left = after["jobs"] - after["running"] - after["kept children"]
    print("running jobs, children of running parents, their history, pending deliveries: "
          + ("untouched" if untouched else f"CHANGED: {before} -> {after}"))
    print(f"ended jobs left: {left}; " + ("counts as expected" if complete else
                                          f"EXPECTED {expected}"))
    return untouched and complete and left == 0 and nothing == PruneResult()


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--jobs", type=int, default=1_000_000)
    cli.add_argument("--history", type=int, default=3)
    cli.add_argument("--running", type=int, default=1_000)
    cli.add_argument("--families", type=int, default=100)
    cli.add_argument("--batch", type=int, default=5_000)
    cli.add_argument("--postgres",
                     default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = cli.parse_args()
    admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"morag_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        ok = run(args.postgres.rsplit("/", 1)[0] + f"/{name}", args)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
