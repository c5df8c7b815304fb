"""JobStore on a real SQLite file and on the real PostgreSQL: every test runs on both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from morag_jobs.errors import ConcurrencyConflict, JobExists, JobNotFound, StoreUnavailable
from morag_jobs.handler import ProgressHandler
from morag_jobs.stages import StagePlan, clear_stage_plans, register_stage_plan
from morag_jobs.store import Job, JobStatus, JobStore, MappingStore
from morag_jobs.store.migrate import VERSION_TABLE, current_revision, head_revision
from morag_jobs.store.models import Base
from morag_jobs.store.reaping import stale_jobs
from tests.services import fresh_postgres_schema

PLAN = StagePlan({"download": (0, 10), "processing": (10, 70), "indexing": (70, 100)})
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as job_store:
        yield job_store


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    clear_stage_plans()
    yield
    clear_stage_plans()


def set_fields(store: JobStore, job_id: str, **changes: Any) -> Job:
    """Write ``changes`` unconditionally (no history)."""
    job = store.update_job(job_id, lambda _: (changes, None))
    assert job is not None, "an unconditional update always writes"
    return job


def raise_percentage(value: float) -> Any:
    """A mutate: percentage = max(old, value), history recorded."""

    def mutate(job: Job) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if value <= job.percentage:
            return None
        return {"percentage": value, "status": JobStatus.PROCESSING}, {"message": f"at {value}"}

    return mutate


# -- creating and reading jobs ----------------------------------------------------------


def test_a_new_job_is_pending_at_zero_with_a_generated_id(store: JobStore) -> None:
    job = store.create_job(name="talk.mp3", job_type="audio", user_id="u1", metadata={"k": [1]})
    assert len(job.id) == 32 and int(job.id, 16) >= 0, "the id is a uuid4 hex string"
    assert job.status is JobStatus.PENDING
    assert job.percentage == 0.0 and isinstance(job.percentage, float)
    assert job.version == 0, "a new job starts at version 0"
    assert job.metadata == {"k": [1]}
    assert job.summary == ""
    assert job.created_at == job.updated_at
    assert store.get_job(job.id) == job, "reading back gives the snapshot create_job returned"


def test_create_job_stores_the_stage_plan_given(store: JobStore) -> None:
    job = store.create_job(stages=PLAN, job_id="with-plan")
    assert store.require_job("with-plan").stages == PLAN
    assert job.stages == PLAN


def test_the_handler_creates_a_job_with_the_plan_registered_for_its_type(store: JobStore) -> None:
    register_stage_plan("audio", PLAN)
    handler = ProgressHandler(store)
    assert handler.create_job(job_type="audio").stages == PLAN
    assert handler.create_job(job_type="video").stages is None, "no plan registered for video"
    assert store.create_job(job_type="audio").stages is None, "the store reads no registry"
    handler.close()


def test_create_job_keeps_a_given_id_and_refuses_a_duplicate(store: JobStore) -> None:
    store.create_job(job_id="job-1", name="first")
    with pytest.raises(JobExists, match="a job with id 'job-1' already exists"):
        store.create_job(job_id="job-1", name="second")
    assert store.require_job("job-1").name == "first", "the duplicate did not overwrite"


@pytest.mark.parametrize("bad_id", ["", "x" * 65])
def test_job_ids_are_one_to_sixty_four_characters(store: JobStore, bad_id: str) -> None:
    with pytest.raises(ValueError, match="at most 64 characters"):
        store.create_job(job_id=bad_id)


def test_missing_jobs_are_none_or_job_not_found(store: JobStore) -> None:
    assert store.get_job("nope") is None
    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        store.require_job("nope")


def test_datetimes_read_back_as_aware_utc(store: JobStore) -> None:
    berlin = timezone(timedelta(hours=2))
    job = store.create_job()
    set_fields(
        store,
        job.id,
        started_at=datetime(2024, 5, 1, 14, 0, tzinfo=berlin),
        finished_at=datetime(2024, 5, 1, 13, 0),  # naive: taken as UTC
    )
    with JobStore(store.engine.url.render_as_string(hide_password=False)) as other:
        again = other.require_job(job.id)
    assert again.started_at == T0 and again.started_at.tzinfo is UTC, "14:00+02:00 is 12:00 UTC"
    assert again.finished_at == T0 + timedelta(hours=1), "a naive datetime is stored as UTC"
    assert again.finished_at.tzinfo is UTC
    assert again.created_at.tzinfo is UTC and again.updated_at.tzinfo is UTC


def test_job_to_dict_is_json_ready(store: JobStore) -> None:
    job = store.create_job(name="a", stages=PLAN, metadata={"n": 1})
    data = json.loads(json.dumps(job.to_dict()))
    assert data["status"] == "PENDING"
    assert data["stages"][0] == ["download", 0.0, 10.0]
    assert datetime.fromisoformat(data["created_at"]) == job.created_at
    assert data["metadata"] == {"n": 1}


# -- listing ----------------------------------------------------------------------------


@pytest.fixture
def five_jobs(store: JobStore) -> list[Job]:
    """Five jobs created an hour apart from T0, for two users and two types."""
    specs = [
        ("u1", "audio", JobStatus.PENDING),
        ("u1", "video", JobStatus.PROCESSING),
        ("u2", "audio", JobStatus.FINISHED),
        ("u2", "audio", JobStatus.FAILED),
        ("u1", "audio", JobStatus.PROCESSING),
    ]
    jobs = []
    for i, (user, kind, status) in enumerate(specs):
        job = store.create_job(job_id=f"job-{i}", user_id=user, job_type=kind)
        when = T0 + timedelta(hours=i)
        jobs.append(
            set_fields(
                store, job.id, status=status, created_at=when, updated_at=when, percentage=i * 10.0
            )
        )
    return jobs


def ids(jobs: list[Job]) -> list[str]:
    return [job.id for job in jobs]


def test_list_jobs_is_newest_first_by_default(store: JobStore, five_jobs: list[Job]) -> None:
    assert ids(store.list_jobs()) == ["job-4", "job-3", "job-2", "job-1", "job-0"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": JobStatus.PROCESSING}, ["job-1", "job-4"]),
        ({"status": "processing"}, ["job-1", "job-4"]),
        ({"status": [JobStatus.FINISHED, "FAILED"]}, ["job-2", "job-3"]),
        ({"user_id": "u2"}, ["job-2", "job-3"]),
        ({"job_type": "video"}, ["job-1"]),
        ({"user_id": "u1", "job_type": "audio"}, ["job-0", "job-4"]),
        ({"created_after": T0 + timedelta(hours=2)}, ["job-3", "job-4"]),
        ({"created_before": T0 + timedelta(hours=2)}, ["job-0", "job-1"]),
        ({"updated_after": T0 + timedelta(hours=3, minutes=1)}, ["job-4"]),
        ({"status": "PROCESSING", "created_after": T0}, ["job-1", "job-4"]),
    ],
)
def test_list_and_count_jobs_apply_every_filter(
    store: JobStore, five_jobs: list[Job], filters: dict[str, Any], expected: list[str]
) -> None:
    found = store.list_jobs(**filters, order_by="created_at")
    assert ids(found) == expected, f"filters {filters} should select {expected}"
    assert store.count_jobs(**filters) == len(expected)


def test_unknown_status_filter_names_the_allowed_statuses(store: JobStore) -> None:
    with pytest.raises(ValueError, match="unknown job status 'DONE'; use one of PENDING"):
        store.list_jobs(status="DONE")


def test_list_jobs_pages_with_limit_and_offset(store: JobStore, five_jobs: list[Job]) -> None:
    pages = [ids(store.list_jobs(limit=2, offset=offset)) for offset in (0, 2, 4)]
    assert pages == [["job-4", "job-3"], ["job-2", "job-1"], ["job-0"]]
    assert store.list_jobs(limit=2, offset=10) == []
    assert len(store.list_jobs(limit=None)) == 5, "limit=None lists everything"


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("created_at", ["job-0", "job-1", "job-2", "job-3", "job-4"]),
        ("-percentage", ["job-4", "job-3", "job-2", "job-1", "job-0"]),
        ("updated_at", ["job-0", "job-1", "job-2", "job-3", "job-4"]),
        ("status", ["job-3", "job-2", "job-0", "job-1", "job-4"]),
    ],
)
def test_list_jobs_orders_by_allowed_columns(
    store: JobStore, five_jobs: list[Job], order_by: str, expected: list[str]
) -> None:
    assert ids(store.list_jobs(order_by=order_by)) == expected


@pytest.mark.parametrize("order_by", ["name", "id; DROP TABLE jobs", "--created_at", ""])
def test_list_jobs_refuses_other_orderings(store: JobStore, order_by: str) -> None:
    with pytest.raises(ValueError, match=r"cannot order jobs by .*; use one of created_at"):
        store.list_jobs(order_by=order_by)


def test_count_by_status_lists_every_status(store: JobStore, five_jobs: list[Job]) -> None:
    assert store.count_by_status() == {
        JobStatus.PENDING: 1,
        JobStatus.PROCESSING: 2,
        JobStatus.FINISHED: 1,
        JobStatus.FAILED: 1,
        JobStatus.CANCELLED: 0,
    }


def test_stale_jobs_are_celery_jobs_not_heard_from(store: JobStore) -> None:
    for job_id in ("quiet", "alive", "done", "unclaimed"):
        store.create_job(job_id=job_id, claim=None if job_id == "unclaimed" else "celery")
    set_fields(store, "quiet", status="PROCESSING", started_at=T0)
    set_fields(store, "alive", status="PROCESSING", started_at=T0, heartbeat_at=T0 + timedelta(1))
    set_fields(store, "done", status="FINISHED", started_at=T0)
    set_fields(store, "unclaimed", status="PROCESSING", started_at=T0)
    stale = stale_jobs(store, older_than=T0 + timedelta(hours=1))
    assert ids(stale) == ["quiet"], (
        "only the PROCESSING job a Celery worker claimed, without a recent heartbeat, is stale")


# -- the atomic update ------------------------------------------------------------------


def test_update_job_writes_changes_and_bumps_the_version(store: JobStore) -> None:
    job = store.create_job()
    updated = store.update_job(job.id, raise_percentage(42.5))
    assert updated is not None
    assert (updated.percentage, updated.status, updated.version) == (42.5, "PROCESSING", 1)
    assert updated.updated_at > job.updated_at, "updated_at moves unless the change sets it"
    assert store.require_job(job.id) == updated


def test_update_job_returns_none_and_writes_nothing_when_mutate_declines(store: JobStore) -> None:
    job = store.create_job()
    store.update_job(job.id, raise_percentage(50))
    assert store.update_job(job.id, raise_percentage(30)) is None, "30 after 50 changes nothing"
    again = store.require_job(job.id)
    assert (again.percentage, again.version) == (50.0, 1), "a declined update leaves the row"
    assert len(store.history(job.id)) == 1, "and adds no history"


def test_update_job_reruns_mutate_on_a_fresh_snapshot_after_losing_a_race(store: JobStore) -> None:
    job = store.create_job()
    seen: list[tuple[float, int]] = []

    def mutate(snapshot: Job) -> tuple[dict[str, Any], None]:
        seen.append((snapshot.percentage, snapshot.version))
        if len(seen) == 1:  # another writer gets in between our read and our write
            store.update_job(job.id, raise_percentage(80))
        return {"percentage": max(snapshot.percentage, 60.0)}, None

    result = store.update_job(job.id, mutate)
    assert seen == [(0.0, 0), (80.0, 1)], "the second call sees the competing write"
    assert result is not None
    assert (result.percentage, result.version) == (80.0, 2), "60 never overwrote the 80"


def test_update_job_gives_up_with_concurrency_conflict(store: JobStore) -> None:
    job = store.create_job()

    def always_interrupted(snapshot: Job) -> tuple[dict[str, Any], None]:
        set_fields(store, job.id, summary=f"competitor {snapshot.version}")
        return {"summary": "never written"}, None

    with pytest.raises(ConcurrencyConflict, match="changed under every one of 3 update attempts"):
        store.update_job(job.id, always_interrupted, max_attempts=3)
    assert store.require_job(job.id).summary == "competitor 2"


def test_update_job_raises_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.update_job("nope", raise_percentage(10))


@pytest.mark.parametrize("field", ["id", "version", "colour"])
def test_update_job_refuses_fields_it_does_not_own(store: JobStore, field: str) -> None:
    job = store.create_job()
    with pytest.raises(ValueError, match=f"cannot change job field '{field}'"):
        store.update_job(job.id, lambda _: ({field: "x"}, None))


def test_update_job_accepts_meta_as_the_metadata_attribute(store: JobStore) -> None:
    job = store.create_job(metadata={"a": 1})
    set_fields(store, job.id, meta={"a": 2})
    assert store.require_job(job.id).metadata == {"a": 2}
    set_fields(store, job.id, metadata={"b": 3})
    assert store.require_job(job.id).metadata == {"b": 3}


# -- history ----------------------------------------------------------------------------


def test_history_records_each_write_oldest_first(store: JobStore) -> None:
    job = store.create_job(stages=PLAN)
    for value in (10.0, 25.0, 40.0):
        store.update_job(job.id, raise_percentage(value))
    store.update_job(
        job.id,
        lambda _: (
            {"status": JobStatus.FINISHED, "summary": "done"},
            {"kind": "completion", "source": "lifecycle"},
        ),
    )
    events = store.history(job.id)
    assert [event.percentage for event in events] == [10.0, 25.0, 40.0, 40.0]
    assert [event.message for event in events] == ["at 10.0", "at 25.0", "at 40.0", "done"]
    last = events[-1]
    assert (last.status, last.kind, last.source) == (JobStatus.FINISHED, "completion", "lifecycle")
    assert events[0].kind == "progress" and events[0].source == "api", "the defaults"
    assert last.at == store.require_job(job.id).updated_at, "at defaults to the write's time"
    assert last.at.tzinfo is UTC
    assert json.loads(json.dumps(last.to_dict()))["status"] == "FINISHED"


def test_history_pages_with_after_id_and_limit(store: JobStore) -> None:
    job = store.create_job()
    for value in range(1, 7):
        store.update_job(job.id, raise_percentage(float(value)))
    first_two = store.history(job.id, limit=2)
    rest = store.history(job.id, after_id=first_two[-1].id)
    assert [e.percentage for e in first_two] == [1.0, 2.0]
    assert [e.percentage for e in rest] == [3.0, 4.0, 5.0, 6.0]


def test_an_update_without_history_adds_no_event(store: JobStore) -> None:
    job = store.create_job()
    set_fields(store, job.id, heartbeat_at=T0)
    assert store.history(job.id) == []


def test_history_with_unknown_fields_is_refused_before_writing(store: JobStore) -> None:
    job = store.create_job()
    with pytest.raises(ValueError, match=r"history has unknown fields \['colour'\]"):
        store.update_job(job.id, lambda _: ({"percentage": 5.0}, {"colour": "red"}))
    assert store.require_job(job.id).version == 0, "nothing was written"


def test_history_keeps_only_the_newest_events_per_job(database_url: str) -> None:
    with JobStore(database_url, create_tables=True, history_limit=5) as store:
        job = store.create_job()
        other = store.create_job()
        store.update_job(other.id, raise_percentage(1.0))
        for value in range(1, 13):
            store.update_job(job.id, raise_percentage(float(value)))
        kept = [event.percentage for event in store.history(job.id)]
        assert kept == [8.0, 9.0, 10.0, 11.0, 12.0], "the 5 newest of 12 events are kept"
        assert len(store.history(other.id)) == 1, "trimming one job leaves others alone"


def test_history_limit_is_trimmed_every_tenth_of_the_limit(database_url: str) -> None:
    with JobStore(database_url, create_tables=True, history_limit=20) as store:
        job = store.create_job()
        counts = []
        for value in range(1, 41):
            store.update_job(job.id, raise_percentage(float(value)))
            counts.append(len(store.history(job.id)))
        assert max(counts) <= 21, f"at most limit + limit/10 - 1 events are held: {counts}"
        assert counts[-1] == 20, "a trim on version 40 leaves exactly the limit"
        assert store.history(job.id)[-1].percentage == 40.0


def test_deleting_a_job_deletes_its_history_and_mappings(store: JobStore) -> None:
    job = store.create_job()
    store.update_job(job.id, raise_percentage(5.0))
    MappingStore(store).set("task", "t-1", job.id)
    assert store.delete_job(job.id) is True
    assert store.delete_job(job.id) is False, "the second delete finds nothing"
    assert store.history(job.id) == []
    assert MappingStore(store).get("task", "t-1") is None, "mappings are deleted with their job"


# -- mappings ---------------------------------------------------------------------------


def test_mappings_are_shared_between_store_instances(database_url: str) -> None:
    with (
        JobStore(database_url, create_tables=True) as first,
        JobStore(database_url, create_tables=True) as second,
    ):
        job = first.create_job()
        routes, seen = MappingStore(first), MappingStore(second)
        routes.set("worker", "w-1", job.id)
        routes.set("task", "t-1", job.id)
        assert seen.get("worker", "w-1") == job.id, "another process sees the mapping"
        assert seen.items() == {("worker", "w-1"): job.id, ("task", "t-1"): job.id}
        assert seen.items("task") == {("task", "t-1"): job.id}


def test_set_mapping_replaces_the_earlier_job(store: JobStore) -> None:
    old, new = store.create_job(), store.create_job()
    MappingStore(store).set("worker", "w-1", old.id)
    MappingStore(store).set("worker", "w-1", new.id)
    assert MappingStore(store).get("worker", "w-1") == new.id
    assert MappingStore(store).items() == {("worker", "w-1"): new.id}, "replaced, not duplicated"


def test_worker_and_task_keys_do_not_collide(store: JobStore) -> None:
    a, b = store.create_job(), store.create_job()
    routes = MappingStore(store)
    routes.set("worker", "same", a.id)
    routes.set("task", "same", b.id)
    assert (routes.get("worker", "same"), routes.get("task", "same")) == (a.id, b.id)


def test_mappings_are_deleted_one_by_one_or_per_job(store: JobStore) -> None:
    a, b = store.create_job(), store.create_job()
    MappingStore(store).set("worker", "w-1", a.id)
    MappingStore(store).set("task", "t-1", a.id)
    MappingStore(store).set("task", "t-2", b.id)
    assert MappingStore(store).delete("worker", "w-1") is True
    assert MappingStore(store).delete("worker", "w-1") is False
    assert MappingStore(store).delete_for_job(a.id) == 1
    assert MappingStore(store).items() == {("task", "t-2"): b.id}


def test_a_mapping_to_a_missing_job_is_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="'nope'"):
        MappingStore(store).set("worker", "w-1", "nope")


def test_mapping_kinds_are_worker_or_task(store: JobStore) -> None:
    with pytest.raises(ValueError, match="mapping kind 'queue' is not one of worker, task"):
        MappingStore(store).get("queue", "q")  # type: ignore[arg-type]


# -- schema, migrations, engines ----------------------------------------------------------


def test_upgrade_creates_the_tables_and_is_idempotent(database_url: str) -> None:
    with JobStore(database_url, create_tables=False) as store:
        assert not sa.inspect(store.engine).has_table("jobs"), "the schema starts empty"
        store.upgrade()
        tables = set(sa.inspect(store.engine).get_table_names())
        assert {"jobs", "job_events", "job_mappings", VERSION_TABLE} <= tables
        assert current_revision(store.engine) == head_revision()
        store.upgrade()
        assert store.create_job(job_id="after-upgrade").id == "after-upgrade"


def test_migrations_create_exactly_the_models(store: JobStore) -> None:
    store.get_job("warm-up")  # creates the tables
    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": VERSION_TABLE})
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "the migrations and models/ disagree; write a migration"


def test_postgresql_tables_are_not_created_implicitly(postgres_url: str) -> None:

    with JobStore(fresh_postgres_schema(postgres_url)) as store:
        with pytest.raises(StoreUnavailable, match=r"jobs.*morag-jobs db upgrade"):
            store.get_job("x")
        assert not sa.inspect(store.engine).has_table("jobs"), "PostgreSQL is migrated, not created"


def test_a_new_sqlite_file_gets_its_tables_on_first_use(sqlite_url: str) -> None:
    with JobStore(sqlite_url) as store:
        assert store.create_job(job_id="first").id == "first"
        assert current_revision(store.engine) == head_revision(), "created by the migrations"


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    with JobStore(sqlite_url) as store:
        store.get_job("warm-up")
        with store.engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA busy_timeout").scalar() == 30000
            assert pragma("PRAGMA synchronous").scalar() == 1, "1 is NORMAL"
            assert pragma("PRAGMA foreign_keys").scalar() == 1


def test_an_in_memory_sqlite_store_is_one_database_for_all_threads() -> None:
    import threading  # noqa: PLC0415 (only this test needs it)

    with JobStore("sqlite://") as store:
        job = store.create_job()
        seen: list[Job | None] = []
        thread = threading.Thread(target=lambda: seen.append(store.get_job(job.id)))
        thread.start()
        thread.join()
        assert seen == [job], "another thread sees the same in-memory database"


def test_an_unreachable_database_is_store_unavailable_without_the_password() -> None:
    url = "postgresql+psycopg://morag:s3cret-pw@127.0.0.1:1/jobs"
    store = JobStore(url)
    with pytest.raises(StoreUnavailable) as caught:
        store.get_job("x")
    assert "s3cret-pw" not in str(caught.value), "the password never appears in an error"
    assert "morag:***@127.0.0.1:1/jobs" in str(caught.value)
    assert "s3cret-pw" not in repr(store) and "s3cret-pw" not in store.url
    store.close()


def test_a_sqlite_file_in_a_missing_directory_is_store_unavailable(tmp_path: Any) -> None:
    with (
        JobStore(f"sqlite:///{tmp_path}/missing/jobs.db") as store,
        pytest.raises(StoreUnavailable, match="unable to open database file"),
    ):
        store.create_job()


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    with JobStore("postgresql://u:pw@db.example/jobs") as store:
        assert store.url == "postgresql+psycopg://u:***@db.example/jobs"
    with JobStore("postgres://db.example/jobs") as store:
        assert store.engine.dialect.driver == "psycopg"


def test_a_malformed_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not a database URL") as caught:
        JobStore("not a url with s3cret")
    assert "s3cret" not in str(caught.value)


def test_the_default_url_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv("MORAG_DATABASE_URL", sqlite_url)
    with JobStore() as store:
        assert store.url == sqlite_url


def test_history_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="history_limit must be at least 1"):
        JobStore("sqlite://", history_limit=0)


def test_driver_errors_leave_the_store_as_its_own_error(postgres_url: str) -> None:
    """Nothing outside the store needs SQLAlchemy's exception tree: a database without
    the tables, on every read and write, is ``StoreUnavailable`` saying what to do."""
    url = postgres_url + "?options=-csearch_path%3Dnothing_here"
    store = JobStore(url, create_tables=False)
    try:
        for call in (lambda: store.get_job("x"), lambda: store.create_job(name="n"),
                     lambda: MappingStore(store).set("worker", "w", "x"), store.count_jobs):
            with pytest.raises(StoreUnavailable, match="morag-jobs db upgrade") as raised:
                call()
            assert "\n" not in raised.value.reason, "one line: no SQL, no parameters"
    finally:
        store.close()


def test_a_constraint_violation_keeps_its_meaning(database_url: str) -> None:
    with JobStore(database_url, create_tables=True) as store:
        store.create_job(job_id="twice")
        with pytest.raises(JobExists):
            store.create_job(job_id="twice")
        with pytest.raises(JobNotFound):
            MappingStore(store).set("worker", "w", "no-such-job")
