"""What a new user meets first: the schema's version table, a missing driver, a missing
database. On real SQLite files and the real PostgreSQL, the CLI through its entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from morag_jobs.errors import MoragJobsError, StoreUnavailable
from morag_jobs.store import JobStore
from morag_jobs.store.migrate import (
    OLD_VERSION_TABLE,
    VERSION_TABLE,
    MigrationFailed,
    current_revision,
    head_revision,
    migrate,
)
from morag_jobs.store.models import Base
from tests.services import fresh_postgres_schema

NO_DATABASE = "(set MORAG_DATABASE_URL or pass --database)"
MISSING_EXTRA = ("PostgreSQL needs the [postgres] extra (psycopg not installed): "
                 "pip install 'morag-jobs[postgres]'")
NO_PSYCOPG = "import sys\nsys.modules['psycopg'] = None  # `import psycopg` now fails\n"


def cli(*args: str, cwd: Path | None = None, prelude: str = "",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m morag_jobs ARGS``, or the same entry point after ``prelude`` runs."""
    command = [sys.executable, "-m", "morag_jobs", *args]
    if prelude:
        command = [sys.executable, "-c", f"{prelude}sys.argv = ['morag-jobs', *sys.argv[1:]]\n"
                   "from morag_jobs.__main__ import main\nmain()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                          cwd=cwd, env=env)


def without_database_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MORAG_DATABASE_URL"}


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """The store's own engine on the test's database (nothing migrated yet)."""
    store = JobStore(database_url, migrate=False)
    yield store.engine
    store.close()


def rows(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as connection:
        return list(connection.exec_driver_sql(f"SELECT version_num FROM {table}").scalars())


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def another_apps_alembic(engine: sa.Engine, *revisions: str) -> None:
    """``alembic_version`` as another application's Alembic leaves it."""
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        for revision in revisions:
            connection.exec_driver_sql(
                f"INSERT INTO alembic_version (version_num) VALUES ('{revision}')")


def old_style(engine: sa.Engine, revision: str) -> None:
    """A database migrated by morag-jobs before it had a version table of its own, with a
    job written at 0003 (raw SQL: the models are at the newest schema)."""
    migrate(engine, "0003")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO jobs (id, status, percentage, summary, metadata, created_at, "
            "updated_at, version, ignored_count) VALUES ('kept', 'PENDING', 0, '', '{}', "
            "'2024-05-01 12:00:00+00:00', '2024-05-01 12:00:00+00:00', 0, 0)")
    migrate(engine, revision)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"ALTER TABLE {VERSION_TABLE} RENAME TO {OLD_VERSION_TABLE}")
        if engine.dialect.name == "postgresql":  # and its primary key's name, as Alembic made it
            connection.exec_driver_sql(f"ALTER TABLE {OLD_VERSION_TABLE} RENAME CONSTRAINT "
                                       f"{VERSION_TABLE}_pkc TO {OLD_VERSION_TABLE}_pkc")
    assert current_revision(engine) is None and rows(engine, OLD_VERSION_TABLE) == [revision]


# -- (8) our own Alembic version table ------------------------------------------------------


def test_db_upgrade_leaves_another_apps_alembic_version_alone(
    database_url: str, engine: sa.Engine
) -> None:
    another_apps_alembic(engine, "abc123")
    result = cli("db", "upgrade", "--database", database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "job database is at the newest schema"
    assert rows(engine, "alembic_version") == ["abc123"], "the other application's row stays"
    assert rows(engine, VERSION_TABLE) == [head_revision()]
    with JobStore(database_url) as store:
        assert store.create_job(job_id="beside-alembic").id == "beside-alembic"


def test_a_new_sqlite_file_beside_another_apps_alembic_gets_its_tables(sqlite_url: str) -> None:
    with JobStore(sqlite_url) as store:
        another_apps_alembic(store.engine, "abc123")
        assert store.create_job(job_id="first").id == "first", "migrated on first use"
        assert rows(store.engine, "alembic_version") == ["abc123"]
        assert current_revision(store.engine) == head_revision()


@pytest.mark.parametrize("revision", ["0003", "head"])
def test_an_old_style_database_is_adopted_and_upgraded(
    database_url: str, engine: sa.Engine, revision: str
) -> None:
    revision = head_revision() if revision == "head" else revision
    assert revision is not None
    old_style(engine, revision)
    for _ in range(2):  # and again: a no-op
        result = cli("db", "upgrade", "--database", database_url)
        assert result.returncode == 0, result.stderr
    assert rows(engine, VERSION_TABLE) == [head_revision()]
    assert OLD_VERSION_TABLE not in tables(engine), "it held nothing but our revision"
    columns = {column["name"] for column in sa.inspect(engine).get_columns("job_events")}
    assert {"reported_at", "format"} <= columns, "0004 ran (or had run) on the adopted schema"
    with JobStore(database_url) as store:
        assert store.require_job("kept").id == "kept", "the data is where it was"


def test_an_alembic_version_shared_with_another_app_is_adopted_and_kept(
    sqlite_url: str,
) -> None:
    with JobStore(sqlite_url, migrate=False) as store:
        old_style(store.engine, "0003")
        with store.engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO alembic_version VALUES ('abc123')")
        store.upgrade()
        assert sorted(rows(store.engine, "alembic_version")) == ["0003", "abc123"], (
            "a table that also holds another application's id is not ours to change")
        assert current_revision(store.engine) == head_revision()


def test_the_migrations_create_exactly_the_models_beside_our_version_table(
    database_url: str,
) -> None:
    with JobStore(database_url, migrate=True) as store:
        store.ensure_ready()
        assert {"jobs", "job_events", "job_mappings", VERSION_TABLE} <= tables(store.engine)
        assert "alembic_version" not in tables(store.engine)
        with store.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "version_table": VERSION_TABLE})
            assert compare_metadata(context, Base.metadata) == []


def test_a_revision_from_a_newer_morag_jobs_is_one_line(
    database_url: str, engine: sa.Engine
) -> None:
    migrate(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '0999'")
    result = cli("db", "upgrade", "--database", database_url)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("morag-jobs: cannot migrate the job database: ")
    assert "'0999'" in result.stderr and "newer morag-jobs" in result.stderr
    with (JobStore(database_url, migrate=True) as store,
          pytest.raises(MigrationFailed, match="0999") as raised):
        store.count_jobs()
    assert isinstance(raised.value, MoragJobsError)


def test_db_upgrade_with_a_malformed_url_is_one_line_and_exit_2() -> None:
    result = cli("db", "upgrade", "--database", "not a url with s3cret")
    assert result.returncode == 2
    assert result.stderr == "morag-jobs: not a database URL (expected e.g. sqlite:///morag_jobs.db)\n"


# -- (9) PostgreSQL: the driver, the tables, migrate=True -----------------------------------


def test_a_missing_postgres_driver_names_the_extra() -> None:
    code = NO_PSYCOPG + ("from morag_jobs import JobStore\n"
                         "JobStore('postgresql+psycopg://jobs:s3cret@127.0.0.1/jobs')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"morag_jobs._extras.MissingExtra: {MISSING_EXTRA}", result.stderr
    assert "During handling" not in result.stderr and "direct cause" not in result.stderr
    assert len(lines) < 12, f"short, not SQLAlchemy's import machinery:\n{result.stderr}"
    assert "s3cret" not in result.stderr


def test_a_missing_postgres_driver_is_an_error_of_ours() -> None:
    code = NO_PSYCOPG + (
        "from morag_jobs import JobStore\nfrom morag_jobs.errors import MoragJobsError\n"
        "for url in ('postgres://h/db', 'postgresql+psycopg://h/db'):\n"
        "    try:\n        JobStore(url)\n"
        "    except MoragJobsError as error:\n        print(type(error).__name__, error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"MissingExtra {MISSING_EXTRA}"] * 2


@pytest.mark.parametrize("command", [["list"], ["status", "j"], ["db", "upgrade"]])
def test_the_cli_without_the_postgres_driver_is_one_line(command: list[str]) -> None:
    result = cli(*command, "--database", "postgresql://jobs:s3cret@127.0.0.1/jobs",
                 prelude=NO_PSYCOPG)
    assert result.returncode == 1
    assert result.stderr == f"morag-jobs: {MISSING_EXTRA}\n"


def test_postgresql_without_the_tables_says_to_upgrade(postgres_url: str) -> None:
    url = fresh_postgres_schema(postgres_url)
    with JobStore(url) as store:
        for call in (store.ensure_ready, lambda: store.get_job("x"), store.count_jobs):
            with pytest.raises(StoreUnavailable) as raised:
                call()
            assert raised.value.reason == ("the job tables (jobs, job_events, ...) are "
                                           "missing; run `morag-jobs db upgrade`"), (
                "our words, not the driver's 'relation \"jobs\" does not exist'")
        assert "jobs" not in tables(store.engine), "nothing was created"
    result = cli("list", "--database", url)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("are missing; run `morag-jobs db upgrade`"), (
        result.stderr)


def test_migrate_true_migrates_postgresql_on_first_use(database_url: str) -> None:
    first, second = JobStore(database_url, migrate=True), JobStore(database_url, migrate=True)
    try:
        assert first.create_job(job_id="migrated").id == "migrated"
        assert current_revision(first.engine) == head_revision()
        assert second.require_job("migrated").id == "migrated", "a second store: a no-op"
    finally:
        first.close()
        second.close()


def test_create_tables_is_the_older_name_of_migrate(database_url: str) -> None:
    with JobStore(database_url, create_tables=True, migrate=True) as store:
        assert store.create_job(job_id="old-name").id == "old-name"
    with pytest.raises(ValueError, match="migrate=False and create_tables=True disagree"):
        JobStore(database_url, migrate=False, create_tables=True)


def test_migrate_false_never_creates_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with JobStore(f"sqlite:///{path}", migrate=False) as store:
        assert not store.exists() and store.sqlite_file == path
        with pytest.raises(StoreUnavailable, match="morag-jobs db upgrade"):
            store.count_jobs()
        assert not path.exists(), "asking created nothing"
        store.upgrade()
        assert path.exists() and store.exists() and store.count_jobs() == 0


def test_exists_asks_only_about_sqlite_files(tmp_path: Path) -> None:
    assert JobStore("sqlite://").exists(), "in memory: always there"
    assert JobStore("postgresql://u@db.example/jobs").exists(), "a server's: reached later"
    assert JobStore("postgresql://u@db.example/jobs").sqlite_file is None
    relative = JobStore("sqlite:///morag_jobs.db")
    assert relative.sqlite_file == Path("morag_jobs.db")
    uri = JobStore(f"sqlite:///file:{tmp_path}/x.db?mode=ro&uri=true")
    assert uri.sqlite_file == tmp_path / "x.db" and not uri.exists()


# -- (10) reading commands never create a database ------------------------------------------


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["status", "j"],
                                     ["history", "j"], ["keys", "list"], ["webhooks", "list"],
                                     ["webhooks", "deliveries"]])
def test_reading_commands_never_create_a_database(tmp_path: Path, command: list[str]) -> None:
    result = cli(*command, cwd=tmp_path, env=without_database_url())
    assert result.returncode == 1
    assert result.stderr == f"morag-jobs: no job database at ./morag_jobs.db {NO_DATABASE}\n"
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [], "no file, no -wal, no -shm"


def test_a_missing_file_given_is_named_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = cli("list", "--database", f"sqlite:///{path}")
    assert result.returncode == 1
    assert result.stderr == f"morag-jobs: no job database at {path} {NO_DATABASE}\n"
    assert not path.exists()


def test_reading_commands_do_not_create_the_tables_either(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sa.create_engine(f"sqlite:///{path}").begin() as connection:
        connection.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    result = cli("list", "--database", f"sqlite:///{path}")
    assert result.returncode == 1 and "run `morag-jobs db upgrade`" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert tables(sa.create_engine(f"sqlite:///{path}")) == {"notes"}


def test_reading_the_default_database_says_so(tmp_path: Path) -> None:
    with JobStore(f"sqlite:///{tmp_path}/morag_jobs.db", migrate=True) as store:
        store.create_job(job_id="here")
    result = cli("list", "--json", cwd=tmp_path, env=without_database_url())
    assert result.returncode == 0, result.stderr
    assert '"id": "here"' in result.stdout
    assert result.stderr == (f"database: sqlite:///morag_jobs.db (the default; "
                             f"{NO_DATABASE[1:-1]})\n")


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal is POSIX")
def test_a_terminal_is_told_which_database_with_its_password_masked(postgres_url: str) -> None:
    import pty  # noqa: PLC0415 (POSIX only)

    url = sa.make_url(fresh_postgres_schema(postgres_url, migrate=True))
    if url.password is None:
        url = url.set(password="s3cret-pw")  # the tests' server trusts local connections
    password = str(url.password)
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "morag_jobs", "list", "--database",
         url.render_as_string(hide_password=False)],
        stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    assert process.wait(60) == 0, seen
    assert process.stdout is not None
    process.stdout.close()
    said = seen.decode()
    assert said.startswith("database: postgresql+psycopg://"), said
    assert ":***@" in said and password not in said


def test_commands_that_write_may_still_create_the_default_database(tmp_path: Path) -> None:
    result = cli("reap", cwd=tmp_path, env=without_database_url())
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "morag_jobs.db").exists()
    assert cli("list", cwd=tmp_path, env=without_database_url()).returncode == 0
