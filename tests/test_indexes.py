"""Migration 0008's indexes, the plans they give the store's queries, and the list's capped
total (``JobReads.count_jobs_up_to`` and ``GET /api/v1/jobs``'s ``total_is_lower_bound``).

``bench/explain_bench.py`` checks the same queries with EXPLAIN ANALYZE at 1,000,000 jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from api_helpers import running_api
from sqlalchemy import event

from morag_jobs.api import jobs as jobs_route
from morag_jobs.api.schemas import JobPage
from morag_jobs.events import utc_now
from morag_jobs.store import Family, JobStatus, JobStore
from morag_jobs.store import reaping as reaper
from morag_jobs.store.durations import job_duration
from morag_jobs.store.migrate import VERSION_TABLE, alembic_config, current_revision, migrate
from morag_jobs.store.models import Base
from morag_jobs.store.reads import JobCount, JobReads
from tests.services import fresh_postgres_schema

NEW = {"ix_jobs_created_at_id", "ix_jobs_status_created_at_id", "ix_jobs_user_id_created_at_id",
       "ix_jobs_user_id_status_created_at_id", "ix_jobs_job_type_status_created_at_id",
       "ix_jobs_updated_at_id", "ix_jobs_parent_id_created_at_id", "ix_jobs_remote_lease_until",
       "ix_jobs_finished_job_type_finished_at_id"}
OLD = {"ix_jobs_created_at", "ix_jobs_status", "ix_jobs_user_id", "ix_jobs_job_type",
       "ix_jobs_parent_id", "ix_jobs_status_updated_at"}
"""What 0008 adds, and the indexes (0001, 0006) it makes redundant."""

Index = tuple[tuple[str, ...], bool, str | None]


def indexes(engine: sa.Engine, table: str = "jobs") -> dict[str, Index]:
    """The table's indexes as the database has them: columns, unique, partial predicate."""
    found = {}
    for index in sa.inspect(engine).get_indexes(table):
        where = index.get("dialect_options", {}).get(f"{engine.dialect.name}_where")
        found[str(index["name"])] = (tuple(str(c) for c in index["column_names"]),
                                     bool(index["unique"]), None if where is None else str(where))
    return found


def downgrade(engine: sa.Engine, revision: str) -> None:
    with engine.connect() as connection, connection.begin():
        command.downgrade(alembic_config(connection), revision)


def differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": VERSION_TABLE})
        return list(compare_metadata(context, Base.metadata))


# -- the migration ------------------------------------------------------------------------------


def test_0008_upgrades_and_downgrades_cleanly_with_the_data_kept(database_url: str) -> None:
    with JobStore(database_url, migrate=False) as store:
        engine = store.engine
        migrate(engine, "0007")
        at_0007 = indexes(engine)
        assert set(at_0007) >= OLD and not NEW & set(at_0007)
        # 0008 changes no column: the store writes a 0007 database as it is
        parent, _ = Family(store).create({"name": "canvas"}, [{"name": "a"}, {"name": "b"}])
        lone = store.create_job(job_id="kept", user_id="alice", claim="remote",
                                lease_seconds=60)

        migrate(engine, "head")
        at_head = indexes(engine)
        assert set(at_head) >= NEW and not OLD & set(at_head), "0008 replaced the old ones"
        assert differences(engine) == [], "the migrations build the models' indexes"
        assert store.require_job("kept") == lone
        assert [kid.name for kid in Family(store).children(parent.id)] == ["a", "b"]

        downgrade(engine, "0007")
        assert current_revision(engine) == "0007"
        assert indexes(engine) == at_0007, "the downgrade puts back exactly what was there"
        assert store.require_job("kept") == lone

        migrate(engine, "head")  # and up again
        assert indexes(engine) == at_head


def test_0008_skips_an_index_built_beforehand(database_url: str) -> None:
    """On a live database the indexes may be built first with CREATE INDEX CONCURRENTLY
    (``bench/explain_bench.py --print-ddl``); the migration then leaves them be."""
    with JobStore(database_url, migrate=False) as store:
        migrate(store.engine, "0007")
        with store.engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE INDEX ix_jobs_updated_at_id ON jobs (updated_at, id)")
        migrate(store.engine, "head")
        assert differences(store.engine) == []


def test_the_migrated_indexes_are_the_models_own_partial_predicates_included(
    database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Alembic's comparison does not look at a partial index's WHERE: this does, against
    the tables the models create themselves."""
    if database_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path}/models.db"
    else:
        other = fresh_postgres_schema(str(request.getfixturevalue("postgres_url")))
    with JobStore(database_url, migrate=True) as migrated, \
            JobStore(other, migrate=False) as modelled:
        migrated.ensure_ready()
        Base.metadata.create_all(modelled.engine)
        for table in ("jobs", "job_events"):
            assert indexes(migrated.engine, table) == indexes(modelled.engine, table)
        partial = indexes(migrated.engine)
        assert partial["ix_jobs_remote_lease_until"][2] is not None
        assert "FINISHED" in str(partial["ix_jobs_finished_job_type_finished_at_id"][2])


# -- the plans ----------------------------------------------------------------------------------


@contextmanager
def sent(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


Call = Callable[[JobStore, dict[str, Any]], object]
NOW = utc_now()
PLANS: list[tuple[str, Call, str]] = [
    ("newest", lambda s, _: s.list_jobs(limit=20), "ix_jobs_created_at_id"),
    ("by status", lambda s, _: s.list_jobs(status="FAILED", limit=20),
     "ix_jobs_status_created_at_id"),
    ("by user", lambda s, _: s.list_jobs(user_id="user-3", limit=20),
     "ix_jobs_user_id_created_at_id"),
    ("by user and status", lambda s, _: s.list_jobs(user_id="user-3", status="FAILED",
                                                    limit=20),
     "ix_jobs_user_id_status_created_at_id"),
    ("by type and status", lambda s, _: s.list_jobs(job_type="type-2", status="FAILED",
                                                    limit=20),
     "ix_jobs_job_type_status_created_at_id"),
    ("the stream poll", lambda s, _: s.list_jobs(
        updated_after=NOW - timedelta(seconds=2), order_by="updated_at", limit=500),
     "ix_jobs_updated_at_id"),
    ("children", lambda s, ids: Family(s).children(ids["parent"]),
     "ix_jobs_parent_id_created_at_id"),
    ("expired leases", lambda s, _: reaper.expired_leases(s, NOW), "ix_jobs_remote_lease_until"),
    ("never started", lambda s, _: reaper.never_started(s, NOW - timedelta(minutes=10)),
     "ix_jobs_status_created_at_id"),
    ("the ETA's finished jobs", lambda s, _: job_duration(s, "type-1"),
     "ix_jobs_finished_job_type_finished_at_id"),
    ("a job's history", lambda s, ids: s.history(ids["parent"], limit=100),
     "ix_job_events_job_id_id"),
    ("the capped count by user and status", lambda s, _: JobReads(s).count_jobs_up_to(
        100, user_id="user-3", status="FINISHED"), "ix_jobs_user_id_status_created_at_id"),
    ("the capped count by type", lambda s, _: JobReads(s).count_jobs_up_to(
        100, job_type="type-2"), "ix_jobs_job_type_status_created_at_id"),
]


@pytest.fixture(scope="module")
def filled_postgres(postgres_url: str) -> Iterator[tuple[JobStore, dict[str, Any]]]:
    """2,000 jobs in a schema of their own (statuses, users, types, claims, a parent of 30)
    and 6,300 history rows, 300 of them the parent's."""
    with JobStore(fresh_postgres_schema(postgres_url), migrate=True) as store:
        store.ensure_ready()
        parent, _ = Family(store).create({"name": "canvas"},
                                         [{"name": f"kid {n}"} for n in range(30)])
        with store.engine.begin() as connection:
            connection.exec_driver_sql("""  -- %% is psycopg's escaped %
                INSERT INTO jobs (id, job_type, user_id, status, percentage, summary, metadata,
                                  created_at, updated_at, finished_at, version, ignored_count,
                                  claim, lease_until)
                SELECT 'j' || g, 'type-' || (g %% 8), 'user-' || (g %% 50),
                       (ARRAY['PENDING', 'PROCESSING', 'FINISHED', 'FINISHED', 'FINISHED',
                              'FINISHED', 'FINISHED', 'FAILED', 'CANCELLED'])[1 + g %% 9],
                       0, '', '{}', now() - g * interval '1 minute',
                       now() - g * interval '1 minute', now() - g * interval '1 minute', 0, 0,
                       (ARRAY['celery', 'remote', 'queued'])[1 + g %% 3],
                       now() - g * interval '1 second'
                FROM generate_series(1, 2000) AS g""")
            connection.exec_driver_sql(
                "INSERT INTO job_events (job_id, at, source, kind) "
                "SELECT CASE WHEN k %% 21 = 0 THEN %(parent)s ELSE 'j' || (k %% 2000 + 1) END, "
                "now(), 'api', 'progress' FROM generate_series(1, 6300) AS k",
                {"parent": parent.id})
            connection.exec_driver_sql("ANALYZE")
        yield store, {"parent": parent.id}


@pytest.mark.parametrize(("what", "call", "index"), PLANS, ids=[plan[0] for plan in PLANS])
def test_each_query_reads_its_index_on_postgresql(
    filled_postgres: tuple[JobStore, dict[str, Any]], what: str, call: Call, index: str
) -> None:
    """The statement the store sends, planned with sequential scans, bitmap scans and sorts
    made the last resort (the table is small here: the planner would rightly read it
    whole), reads the index meant for it: the queries and the indexes are in step."""
    store, ids = filled_postgres
    with sent(store.engine) as statements:
        call(store, ids)
    statement, parameters = statements[-1]
    with store.engine.connect() as connection:
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            connection.exec_driver_sql(f"SET LOCAL {setting} = off")
        plan = "\n".join(row[0] for row in connection.exec_driver_sql(
            "EXPLAIN " + statement, parameters))
        connection.rollback()
    assert index in plan, f"{what}: expected {index} in\n{plan}"


def test_the_capped_count_reads_no_more_than_the_cap_on_postgresql(
    filled_postgres: tuple[JobStore, dict[str, Any]],
) -> None:
    store, _ = filled_postgres
    reads = JobReads(store)
    with sent(store.engine) as statements:
        assert reads.count_jobs_up_to(10, status="FINISHED") == JobCount(10, lower_bound=True)
    statement, parameters = statements[-1]
    with store.engine.connect() as connection:
        plan = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).scalar()
    limit = plan[0]["Plan"]["Plans"][0]
    assert limit["Node Type"] == "Limit" and limit["Actual Rows"] == 11, limit


# -- the capped count ---------------------------------------------------------------------------


def test_the_capped_count_is_exact_up_to_the_cap_and_a_lower_bound_past_it(
    database_url: str,
) -> None:
    with JobStore(database_url, migrate=True) as store:
        for n in range(7):
            job = store.create_job(user_id="alice" if n < 3 else "bob",
                                   job_type="audio" if n % 2 else "video")
            if n == 0:
                store.update_job(job.id, lambda _: ({"status": JobStatus.FINISHED}, None))
        reads = JobReads(store)
        assert reads.count_jobs_up_to(10) == JobCount(7)
        assert reads.count_jobs_up_to(7) == JobCount(7), "exactly the cap is still exact"
        assert reads.count_jobs_up_to(6) == JobCount(6, lower_bound=True)
        assert reads.count_jobs_up_to(0) == JobCount(0, lower_bound=True)
        assert reads.count_jobs_up_to(5, user_id="nobody") == JobCount(0)
        assert reads.count_jobs_up_to(0, user_id="nobody") == JobCount(0)
        for filters in ({}, {"user_id": "alice"}, {"user_id": "bob", "job_type": "audio"},
                        {"status": "PENDING"}, {"status": ["FINISHED", "FAILED"]},
                        {"created_before": utc_now()}):
            exact = store.count_jobs(**filters)
            assert reads.count_jobs_up_to(exact, **filters) == JobCount(exact), filters
            assert reads.count_jobs_up_to(exact + 5, **filters) == JobCount(exact), filters
            assert exact > 0, filters
            assert reads.count_jobs_up_to(exact - 1, **filters) == JobCount(
                exact - 1, lower_bound=True), filters
        with pytest.raises(ValueError, match="negative"):
            reads.count_jobs_up_to(-1)
        with pytest.raises(TypeError, match="unknown job filter"):
            reads.count_jobs_up_to(5, owner="alice")  # type: ignore[call-arg]


# -- the API ------------------------------------------------------------------------------------


def test_the_list_total_says_when_it_is_a_lower_bound(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_route, "TOTAL_CAP", 3)
    with running_api(database_url) as api:
        admin = api.key("admin")
        for n in range(5):
            api.job(name=f"job{n}", user_id="alice")

        def page(**params: Any) -> tuple[int, bool, int]:
            answer = api.get("/api/v1/jobs", admin, **params).json()
            return answer["total"], answer["total_is_lower_bound"], len(answer["items"])

        assert page(limit=1) == (3, True, 1), "counted to the cap, and says so"
        assert page(limit=2, offset=1) == (4, True, 2), "past this page: offset + limit + 1"
        assert page(limit=2, offset=2) == (5, False, 2), "a cap reaching past them all: exact"
        assert page(limit=50) == (5, False, 5)
        monkeypatch.setattr(jobs_route, "TOTAL_CAP", 10_000)
        assert page() == (5, False, 5), "below the cap the total is exact, as it always was"
        alice = api.key("user", "alice")
        other = api.get("/api/v1/jobs", alice, user="bob").json()
        assert (other["total"], other["total_is_lower_bound"]) == (0, False)


def test_paging_by_the_total_as_the_dashboard_does_reaches_every_job(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dashboard.js stops loading when a page is short or ``offset + fetched >= total``: a
    lower bound always reaches past the page, so paging goes on to the last job."""
    monkeypatch.setattr(jobs_route, "TOTAL_CAP", 3)
    with running_api(database_url) as api:
        admin = api.key("admin")
        made = {api.job(name=f"job{n}").id for n in range(11)}
        listed: list[str] = []
        done, size = False, 2
        while not done:
            answer = api.get("/api/v1/jobs", admin, limit=size, offset=len(listed)).json()
            fetched = [job["id"] for job in answer["items"]]
            listed += fetched
            done = len(fetched) < size or len(listed) >= answer["total"]
            assert answer["total_is_lower_bound"] == (answer["total"] < len(made))
        assert sorted(listed) == sorted(made)


def test_the_page_documents_its_lower_bound() -> None:
    described = JobPage.model_fields["total_is_lower_bound"].description or ""
    assert f"{jobs_route.TOTAL_CAP:,}" in described, "the schema names the route's cap"
    assert f"{jobs_route.TOTAL_CAP:,}" in (jobs_route.list_jobs.__doc__ or "")
    assert JobPage(items=[], total=0, limit=1, offset=0).total_is_lower_bound is False
