"""The store's real queries at scale: EXPLAIN (ANALYZE, BUFFERS) at 1,000,000 jobs.

Creates a fresh PostgreSQL database (``morag_bench_<random>``, dropped at the end),
migrates it, fills ``--jobs`` jobs (varied status, user, type and times; running Celery
jobs, a few of them stale; remote jobs with leases, some expired; queued jobs, some never
started; parents with 50 children each) and ``--events`` history rows (9 per job, and
1,000 each for one job in a thousand) with set-based ``INSERT ... SELECT ... FROM
generate_series``, then ``VACUUM ANALYZE``.

Every query is the store's own: each line calls the store (``JobStore.list_jobs``,
``JobReads.count_jobs_up_to``, the reaper's scans, ``Family.children``, ...), records the
SQL and parameters it sends (a ``before_cursor_execute`` listener: the statement as the
PostgreSQL dialect compiled it, with the values the driver binds) and runs ``EXPLAIN
(ANALYZE, BUFFERS)`` on exactly that (``--sql`` prints it). Prints, per statement, the
scans of its plan (Index Scan / Index Only Scan / Bitmap / Seq Scan, with the index), the
median execution time of three warm runs, and whether it and its planning time together
are under 20 ms; then the median time of one job write (the store's compare-and-set
UPDATE, which updates every index; rolled back, so both runs see the same data).

``--without-indexes`` migrates only up to 0007 (the schema before the indexes of 0008);
``--both`` fills once, runs with 0008, downgrades to 0007 and runs again, and prints the
two side by side. ``--print-ddl`` prints the ``CREATE INDEX CONCURRENTLY`` statements of
0008 (to build them on a live database before migrating) and exits.

    python bench/explain_bench.py [--jobs 1000000] [--events 10000000]
        [--without-indexes | --both] [--sql] [--keep] [--print-ddl]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy
from alembic import command
from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex

from morag_jobs.api.jobs import TOTAL_CAP
from morag_jobs.api.watch import OVERLAP
from morag_jobs.events import utc_now
from morag_jobs.store import Family, Job, JobStore
from morag_jobs.store import queries as q
from morag_jobs.store import reaping as reaper
from morag_jobs.store.durations import job_duration, recent_progress
from morag_jobs.store.migrate import MIGRATIONS_DIR, alembic_config, migrate
from morag_jobs.store.models import JobRow
from morag_jobs.store.reads import JobReads

BEFORE = "0007"
FAST_MS = 20.0
TYPES = ("audio", "video", "document", "ml-batch", "ingest", "ocr", "thumbnail", "export")
SPAN_S = 30 * 24 * 3600
"""The jobs were created over the last 30 days, oldest first."""
RECENT = 0.005
"""The newest 0.5 % of jobs are still running or queued: a few thousand at a time."""


def new_indexes() -> list[str]:
    """The names migration 0008 creates, read from the migration itself."""
    path = MIGRATIONS_DIR / "versions" / "0008_indexes.py"
    spec = importlib.util.spec_from_file_location("migration_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name for name, _, _ in module._NEW]


def print_ddl() -> None:
    """0008's indexes as ``CREATE INDEX CONCURRENTLY IF NOT EXISTS``, from the models."""
    by_name = {index.name: index for index in cast(Table, JobRow.__table__).indexes}
    for name in new_indexes():
        ddl = str(CreateIndex(by_name[name]).compile(dialect=postgresql.dialect()))
        print(ddl.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY IF NOT EXISTS", 1) + ";")


# -- filling the tables ------------------------------------------------------------------------

# {t0} is the time the data is made at (a parameter: running jobs stay fresh as of then)
AT_T0 = "CAST(:t0 AS timestamptz)"
JOBS_SQL = """
INSERT INTO jobs (id, name, job_type, user_id, status, percentage, stage, summary, metadata,
                  worker_id, created_at, started_at, updated_at, finished_at, last_progress_at,
                  heartbeat_at, version, ignored_count, claim, lease_seconds, lease_until,
                  parent_id, weight, children, children_done, children_failed,
                  children_weight, progress_sum, attempt)
SELECT id, 'job ' || g, job_type, user_id, status,
       CASE WHEN status = 'FINISHED' THEN 100 ELSE round((r4 * 100)::numeric, 1) END,
       CASE WHEN status = 'PENDING' THEN NULL ELSE 'stage ' || (g % 4) END,
       lower(status), CASE WHEN status = 'PENDING' AND r4 < 0.05
                           THEN '{"redelivery_deadline": "2030-01-01T00:00:00+00:00"}'
                           ELSE '{}' END::json,
       CASE WHEN claim = 'remote' THEN 'worker-' || (g % 40) END,
       created, started, updated, finished,
       CASE WHEN started IS NOT NULL THEN updated END,
       CASE WHEN status = 'PROCESSING' AND claim = 'celery' THEN updated END,
       1 + (g % 30), 0, claim,
       CASE WHEN claim = 'remote' THEN 300 END,
       CASE WHEN claim = 'remote' THEN updated + interval '300 seconds' END,
       parent_id, 1, children, 0, 0, children, 0, 1
FROM (
    SELECT g, id, created, status, claim, user_id, job_type, r4, parent_id, children,
           CASE WHEN status = 'PENDING' THEN NULL ELSE created + interval '5 seconds' END
               AS started,
           CASE WHEN status IN ('FINISHED', 'FAILED', 'CANCELLED')
                THEN least(created + make_interval(secs => 60 + r4 * 3540), {t0}) END
               AS finished,
           CASE WHEN status IN ('FINISHED', 'FAILED', 'CANCELLED')
                THEN least(created + make_interval(secs => 60 + r4 * 3540), {t0})
                WHEN status = 'PENDING' THEN created
                WHEN g % 10000 = 0 THEN created + interval '60 seconds'  -- stale
                ELSE greatest(created, {t0} - make_interval(secs => r4 * 60)) END
               AS updated
    FROM (
        SELECT g, md5(g::text) AS id, r4,
               {t0} - make_interval(secs => (:n - g)::float8 * :span / :n) AS created,
               CASE WHEN g % 10000 = 0 THEN 'PROCESSING'
                    WHEN g > :n * (1 - :recent) THEN
                        CASE WHEN r1 < 0.4 THEN 'PENDING' ELSE 'PROCESSING' END
                    WHEN r1 < 0.90 THEN 'FINISHED'
                    WHEN r1 < 0.97 THEN 'FAILED'
                    ELSE 'CANCELLED' END AS status,
               CASE WHEN r2 < 0.1 THEN 'remote'
                    WHEN g % 10000 <> 0 AND g > :n * (1 - :recent) AND r1 < 0.4 THEN 'queued'
                    ELSE 'celery' END AS claim,
               CASE WHEN r3 < 0.95 THEN 'user-' || floor(1000 * r3 ^ 4)::int END AS user_id,
               (ARRAY[{types}])[1 + floor(8 * r2 ^ 2)::int] AS job_type,
               CASE WHEN g > 1000 AND g % 1000 BETWEEN 1 AND 50 AND g < :n * 0.9
                    THEN md5((g - g % 1000)::text) END AS parent_id,
               CASE WHEN g % 1000 = 0 AND g < :n * 0.9 THEN 50 ELSE 0 END AS children
        FROM (SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4
              FROM generate_series(1, :n) AS g) AS draws
    ) AS jobs
) AS timed
"""

EVENTS_SQL = """
INSERT INTO job_events (job_id, at, percentage, stage, message, status, source, kind)
SELECT md5(job::text), {t0} - make_interval(secs => (:total - k)::float8 * :span / :total),
       (k % 100), 'stage ' || (k % 4), 'step ' || k,
       CASE WHEN k % 50 = 0 THEN 'FINISHED' ELSE 'PROCESSING' END,
       CASE WHEN k % 3 = 0 THEN 'log' ELSE 'callback' END,
       CASE WHEN k % 50 = 0 THEN 'completion' ELSE 'progress' END
FROM (
    SELECT k, CASE
        -- one job in a thousand (g % 1000 = 500) has 1,000 events, spread over the run
        WHEN k <= :big THEN 500 + 1000 * (k % (:n / 1000))
        -- the rest: 64 jobs at a time write their events interleaved
        ELSE 1 + ((k - :big - 1) / (64 * :per)) * 64 + ((k - :big - 1) % 64)
    END AS job
    FROM generate_series(1, :total) AS k
) AS events
WHERE job <= :n
"""


def fill(engine: sqlalchemy.Engine, jobs: int, events: int, t0: datetime) -> None:
    """The rows, with the secondary indexes dropped and rebuilt after (as a bulk load
    does) and foreign keys unchecked (the rows are consistent by construction)."""
    big = min(events, jobs)  # 1,000 events for each of the jobs/1000 "long" jobs
    per = max(1, (events - big) // jobs)
    with engine.begin() as connection:
        run = connection.exec_driver_sql
        run("SET LOCAL session_replication_role = replica")
        run("SET LOCAL maintenance_work_mem = '512MB'")
        run("SET LOCAL synchronous_commit = off")
        run("SELECT setseed(0.42)")
        indexes = run(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename IN ('jobs', 'job_events') AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint)").all()
        for name, _ in indexes:
            run(f'DROP INDEX "{name}"')
        started = time.perf_counter()
        sql = JOBS_SQL.replace("{types}", ", ".join(f"'{t}'" for t in TYPES))
        sql = sql.replace("{t0}", AT_T0)
        connection.execute(sqlalchemy.text(sql),
                           {"n": jobs, "span": SPAN_S, "recent": RECENT, "t0": t0})
        print(f"  {jobs:,} jobs in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        connection.execute(sqlalchemy.text(EVENTS_SQL.replace("{t0}", AT_T0)), {
            "n": jobs, "span": SPAN_S, "big": big, "per": per, "t0": t0,
            "total": big + per * jobs})
        count = connection.exec_driver_sql("SELECT count(*) FROM job_events").scalar()
        print(f"  {count:,} history rows in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        for _, definition in indexes:
            run(definition)
        print(f"  {len(indexes)} secondary indexes rebuilt in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    analyze(engine)


def analyze(engine: sqlalchemy.Engine) -> None:
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE jobs")
        connection.exec_driver_sql("VACUUM ANALYZE job_events")
    print(f"  VACUUM ANALYZE in {time.perf_counter() - started:.0f} s", flush=True)


# -- the queries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    label: str
    plan: str
    ms: float
    planning_ms: float
    rows: int
    sql: str

    @property
    def fast(self) -> bool:
        return self.ms + self.planning_ms < FAST_MS


@contextmanager
def recording(engine: sqlalchemy.Engine) -> Iterator[list[tuple[str, Any]]]:
    """The (statement, parameters) the engine sends while the block runs."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def scans(node: dict[str, Any]) -> Iterator[str]:
    kind = node["Node Type"]
    if "Scan" in kind and "Subquery" not in kind and "Function" not in kind:
        where = node.get("Index Name") or node.get("Relation Name") or ""
        yield f"{kind} {where}".strip()
    for child in node.get("Plans", []):
        yield from scans(child)


def explain(engine: sqlalchemy.Engine, label: str, call: Callable[[], object]) -> list[Figure]:
    """Run ``call`` (the store's code), then EXPLAIN ANALYZE each statement it sent, three
    times each: the median execution time. A call that sent several statements (a page
    per statement, say) gets a figure per statement, its label numbered."""
    with recording(engine) as sent:
        call()
    statements = [(statement, parameters) for statement, parameters in sent
                  if statement.lstrip().upper().startswith(("SELECT", "WITH"))]
    figures = []
    with engine.connect() as connection:
        for number, (statement, parameters) in enumerate(statements, 1):
            runs = []
            for _ in range(3):
                result = connection.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters).scalar()
                runs.append((result if isinstance(result, list) else json.loads(result))[0])
            times = [run["Execution Time"] for run in runs]
            middle = runs[times.index(statistics.median_low(times))]
            plan = " + ".join(dict.fromkeys(scans(middle["Plan"]))) or middle["Plan"]["Node Type"]
            named = label if len(statements) == 1 else f"{label} [{number}]"
            figures.append(Figure(named, plan, statistics.median(times),
                                  middle["Planning Time"], int(middle["Plan"]["Actual Rows"]),
                                  f"{' '.join(statement.split())}  -- {parameters}"))
        connection.rollback()
    return figures


def queries(store: JobStore, now: datetime) -> list[tuple[str, Callable[[], object]]]:
    """(label, a call of the store's code); ``now`` is the time the data was made at, so
    running jobs are as fresh as they were then."""
    with store.engine.connect() as connection:
        one = connection.exec_driver_sql
        heavy = one("SELECT user_id FROM jobs WHERE user_id IS NOT NULL GROUP BY user_id "
                    "ORDER BY count(*) DESC LIMIT 1").scalar()
        typical = one("SELECT user_id FROM jobs WHERE user_id = 'user-500' LIMIT 1").scalar() \
            or heavy
        mid = one("SELECT user_id FROM jobs WHERE user_id = 'user-10' LIMIT 1").scalar() \
            or heavy
        parent = one("SELECT id FROM jobs WHERE children > 0 ORDER BY created_at DESC "
                     "LIMIT 1").scalar()
        long_job = one("SELECT md5('500')").scalar()
        running = list(one("SELECT id FROM jobs WHERE status = 'PROCESSING' "
                           "ORDER BY created_at DESC LIMIT 50").scalars())
        newest_event = one("SELECT max(id) FROM job_events").scalar() or 0
        newest_of_long = one("SELECT max(id) FROM job_events WHERE job_id = %(j)s",
                             {"j": long_job}).scalar() or 0
        users = dict(one("SELECT user_id, count(*) FROM jobs WHERE user_id = ANY(%(users)s) "
                         "GROUP BY user_id", {"users": [heavy, mid, typical]}).all())
    print("  users: " + ", ".join(f"{user} ({users.get(user, 0):,} jobs)"
                                  for user in (heavy, mid, typical)))
    reads, family = JobReads(store), Family(store)
    cap = max(TOTAL_CAP, 0 + 50 + 1)  # the list route's cap for its first page

    def page(**kwargs: Any) -> Callable[[], object]:
        return lambda: store.list_jobs(limit=50, **kwargs)

    def exact(**kwargs: Any) -> Callable[[], object]:
        return lambda: store.count_jobs(**kwargs)

    def capped(**kwargs: Any) -> Callable[[], object]:
        return lambda: reads.count_jobs_up_to(cap, **kwargs)

    since = now - OVERLAP
    # The stream's poll (api/watch.py): every job changed since its cursor, and the
    # history after its own; a resumed or lagging stream reads its user's changes itself.
    if hasattr(reads, "changes"):
        stream: list[tuple[str, Callable[[], object]]] = [
            ("stream poll (JobReads.changes)", lambda: reads.changes(since, newest_event - 200)),
            ("stream resume, one user (jobs_changed)",
             lambda: reads.jobs_changed(since, user_id=heavy))]
    else:  # the poll as it was: list_jobs(updated_after=...) a page of 500 at a time
        stream = [
            ("stream poll (updated_after, all jobs)", lambda: store.list_jobs(
                updated_after=since, limit=500, order_by="updated_at")),
            ("stream poll (updated_after, one user)", lambda: store.list_jobs(
                user_id=heavy, updated_after=since, limit=500, order_by="updated_at"))]
    if hasattr(reads, "job_since"):  # a job stream's start, and its resume
        job_stream: list[tuple[str, Callable[[], object]]] = [
            ("job stream start (job_since)", lambda: reads.job_since(long_job, None)),
            ("job stream resume (job_since, 200 missed)",
             lambda: reads.job_since(long_job, newest_of_long - 200))]
    else:
        job_stream = [("newest event id of a job", lambda: reads.last_event_id(long_job))]
    return [
        ("list newest (no filter)", page()),
        ("list newest, page 21 (offset 1000)", lambda: store.list_jobs(limit=50, offset=1000)),
        ("list sort=-updated_at", page(order_by="-updated_at")),
        ("list status=PROCESSING", page(status="PROCESSING")),
        ("list status=FINISHED", page(status="FINISHED")),
        ("list status=FAILED,CANCELLED", page(status=["FAILED", "CANCELLED"])),
        ("list status=FAILED sort=-updated_at", page(status="FAILED", order_by="-updated_at")),
        ("list user (heavy)", page(user_id=heavy)),
        ("list user (mid)", page(user_id=mid)),
        ("list user (typical)", page(user_id=typical)),
        ("list user (heavy) status=CANCELLED", page(user_id=heavy, status="CANCELLED")),
        ("list type=video", page(job_type="video")),
        ("list type=export, page 41 (offset 2000)",
         lambda: store.list_jobs(job_type="export", limit=50, offset=2000)),
        ("list type=export status=FAILED", page(job_type="export", status="FAILED")),
        ("total, full count (no filter)", exact()),
        ("total, full count status=FINISHED", exact(status="FINISHED")),
        ("total, full count user (heavy)", exact(user_id=heavy)),
        (f"total, capped {cap:,} (no filter)", capped()),
        (f"total, capped {cap:,} status=FINISHED", capped(status="FINISHED")),
        (f"total, capped {cap:,} status=PROCESSING", capped(status="PROCESSING")),
        (f"total, capped {cap:,} user (heavy)", capped(user_id=heavy)),
        (f"total, capped {cap:,} user (typical)", capped(user_id=typical)),
        (f"total, capped {cap:,} type=export", capped(job_type="export")),
        (f"total, capped {cap:,} user (heavy) CANCELLED",
         capped(user_id=heavy, status="CANCELLED")),
        (f"total, capped {cap:,} type=export FAILED",
         capped(job_type="export", status="FAILED")),
        ("counts by status (metrics)", store.count_by_status),
        *stream,
        ("reaper: stale celery jobs", lambda: reaper.stale_jobs(
            store, now - timedelta(seconds=120))),
        ("reaper: expired remote leases", lambda: reaper.expired_leases(store, now)),
        ("reaper: never-started queued jobs", lambda: reaper.never_started(
            store, now - timedelta(seconds=600))),
        ("reaper: awaiting redelivery", lambda: reaper.awaiting_redelivery(store)),
        ("history of a 1,000-event job (first 101)", lambda: store.history(
            long_job, limit=101)),
        ("history after id (a page)", lambda: store.history(long_job, after_id=0, limit=101)),
        *job_stream,
        ("children of a parent (first 100)", lambda: family.children(parent)),
        ("one job by id", lambda: store.get_job(long_job)),
        ("ETA: last 50 finished of a type", lambda: job_duration(store, "video")),
        ("ETA: recent progress of 50 running", lambda: recent_progress(store, running)),
    ]


def write_cost(store: JobStore, now: datetime, writes: int = 300, warm_up: int = 50) -> float:
    """The median ms of one job write (the store's compare-and-set UPDATE, which updates
    every index: it changes the indexed ``updated_at``) on running jobs, after
    ``warm_up`` others; rolled back, so the data stays as it was for the next run."""
    samples = []
    with store.engine.connect() as connection, connection.begin() as transaction:
        rows = connection.execute(q.select_jobs(q.JOBS.c.status == "PROCESSING")
                                  .order_by(q.JOBS.c.id).limit(writes + warm_up)).all()
        for step, row in enumerate(rows):
            job = Job.from_row(row._mapping)
            changes = {"percentage": min(99.0, job.percentage + 0.1), "summary": f"{step}"}
            statement = q.compare_and_set(job, q.column_values(changes, now))
            started = time.perf_counter()
            connection.execute(statement).one()
            samples.append(time.perf_counter() - started)
        transaction.rollback()
    return statistics.median(samples[warm_up:]) * 1e3


def measure(store: JobStore, title: str, now: datetime, *, sql: bool = False
            ) -> tuple[list[Figure], float]:
    print(f"\n{title}", flush=True)
    figures = []
    for label, call in queries(store, now):
        for figure in explain(store.engine, label, call):
            figures.append(figure)
            print(f"  {figure.label:<44} {figure.ms:9.2f} ms "
                  f"{'<20ms' if figure.fast else 'SLOW '}  {figure.plan}", flush=True)
            if sql:
                print(f"      {figure.sql}")
    writing = write_cost(store, now)
    print(f"  {'one job write (update_job), median':<44} {writing:9.2f} ms")
    return figures, writing


def report(runs: list[tuple[str, list[Figure], float]]) -> None:
    print("\n| query | " + " | ".join(f"{title} plan | ms | <20ms" for title, _, _ in runs)
          + " |")
    print("|---|" + "---|---|---|" * len(runs))
    for row in zip(*(figures for _, figures, _ in runs), strict=False):
        cells = [f"{f.plan} | {f.ms:.2f} | {'yes' if f.fast else '**no**'}" for f in row]
        print(f"| {row[0].label} | " + " | ".join(cells) + " |")
    print("| one job write (update_job), median | "
          + " | ".join(f" | {writing:.2f} | " for _, _, writing in runs) + " |")


@contextmanager
def bench_database(admin_url: str) -> Iterator[str]:
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"morag_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    print(f"database {name}", flush=True)
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def downgrade(engine: sqlalchemy.Engine, revision: str) -> None:
    started = time.perf_counter()
    with engine.connect() as connection, connection.begin():
        command.downgrade(alembic_config(connection), revision)
    print(f"\ndowngraded to {revision} in {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--jobs", type=int, default=1_000_000)
    cli.add_argument("--events", type=int, default=10_000_000)
    mode = cli.add_mutually_exclusive_group()
    mode.add_argument("--without-indexes", action="store_true",
                      help=f"migrate to {BEFORE} only: the schema before 0008's indexes")
    mode.add_argument("--both", action="store_true",
                      help=f"run with 0008, then downgrade to {BEFORE} and run again")
    cli.add_argument("--sql", action="store_true", help="print each statement explained")
    cli.add_argument("--keep", action="store_true", help="print the URL, wait for Enter")
    cli.add_argument("--print-ddl", action="store_true")
    cli.add_argument("--postgres",
                     default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = cli.parse_args()
    if args.print_ddl:
        print_ddl()
        return
    if args.jobs < 100_000:
        cli.error("--jobs: at least 100,000 (the data's shape needs them)")
    with bench_database(args.postgres) as url, JobStore(url, migrate=False) as store:
        migrate(store.engine, BEFORE if args.without_indexes else "head")
        print(f"filling ({args.jobs:,} jobs, {args.events:,} history rows)", flush=True)
        now = utc_now()
        fill(store.engine, args.jobs, args.events, now)
        store.ensure_ready()  # its first-use check is not one of the queries
        runs = []
        title = f"without 0008 (at {BEFORE})" if args.without_indexes else "with 0008"
        runs.append((title, *measure(store, title, now, sql=args.sql)))
        if args.both:
            downgrade(store.engine, BEFORE)
            analyze(store.engine)
            title = f"without 0008 (at {BEFORE})"
            runs.append((title, *measure(store, title, now, sql=args.sql)))
        report(runs)
        if args.keep:
            input(f"\n{url} kept until Enter ")


if __name__ == "__main__":
    main()
