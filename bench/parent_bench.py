"""Parent jobs at scale: a group of 10,000 children, on SQLite and PostgreSQL.

Prints, per database: the time to create the parent and its children (one transaction);
the median time of one child write (a progress event written now) with the parent's
running sums moved in the same transaction, against the same write of a job without a
parent (the baseline, same run): the cost of keeping the parent current; the statements
per child write (counted by SQLAlchemy); and the median time to read the parent (one
row) against recomputing the weighted mean from all 10,000 children (what a reader
without the running sum pays on every poll, as celery-progress's GroupProgress does).

    python bench/parent_bench.py [--children 10000] [--writes 2000]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy
from sqlalchemy import event

from morag_jobs import ProgressEvent
from morag_jobs.handler import ProgressHandler
from morag_jobs.store import Family, JobStore


def timed(call: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(url: str, label: str, children: int, writes: int) -> None:
    with JobStore(url, migrate=True) as store:
        handler = ProgressHandler(store, interval=0)
        start = time.perf_counter()
        parent = handler.create_job(name="group", children=[
            {"name": f"part {i}"} for i in range(children)])
        created = time.perf_counter() - start
        kids = Family(store).children(parent.id, limit=None)
        loners = [store.create_job(name=f"alone {i}").id for i in range(min(writes, 500))]
        statements = [0]

        def count(*_: object) -> None:
            statements[0] += 1

        event.listen(store.engine, "before_cursor_execute", count)
        step = [0]

        def child_write() -> None:
            step[0] += 1
            kid = kids[step[0] % len(kids)]
            handler.apply(ProgressEvent(percent=min(step[0] / writes * 100, 100)), kid.id,
                          immediate=True)

        def lone_write() -> None:
            step[0] += 1
            handler.apply(ProgressEvent(percent=min(step[0] / writes * 100, 100)),
                          loners[step[0] % len(loners)], immediate=True)

        timed(lone_write, min(writes, 200))  # warm up both paths before measuring
        timed(child_write, min(writes, 200))
        step[0] = 0
        statements[0] = 0
        alone = timed(lone_write, writes)
        per_lone = statements[0] / writes
        step[0] = 0
        statements[0] = 0
        with_parent = timed(child_write, writes)
        per_child = statements[0] / writes
        event.remove(store.engine, "before_cursor_execute", count)
        read_row = timed(lambda: store.require_job(parent.id), 200)
        family = Family(store)
        recompute = timed(lambda: family.mean(parent.id), 50)
        row = store.require_job(parent.id)
        exact = family.mean(parent.id) or 0.0
        handler.close()
    print(f"{label:>10}: {children:,} children created in {created:.2f}s; child write "
          f"{with_parent * 1e3:.2f} ms vs {alone * 1e3:.2f} ms without a parent "
          f"(x{with_parent / alone:.2f}; {per_child:.1f} vs {per_lone:.1f} statements); "
          f"parent read {read_row * 1e3:.3f} ms vs recomputing the mean "
          f"{recompute * 1e3:.2f} ms (x{recompute / read_row:,.0f}); parent "
          f"{row.percentage:.3f}% = mean {exact:.3f}%")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--children", type=int, default=10_000)
    cli.add_argument("--writes", type=int, default=2_000)
    cli.add_argument("--postgres",
                     default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    cli.add_argument("--skip-postgres", action="store_true")
    args = cli.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{Path(tmp) / 'bench.db'}", "SQLite", args.children, args.writes)
    if args.skip_postgres:
        return
    admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"morag_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        run(args.postgres.rsplit("/", 1)[0] + f"/{name}", "PostgreSQL", args.children,
            args.writes)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
