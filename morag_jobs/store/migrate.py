"""Run the packaged Alembic migrations, configured in code: no ``alembic.ini`` at run time.

The revision is kept in a version table of our own, ``morag_jobs_alembic_version``, so a
database whose other application uses Alembic (and its default ``alembic_version``) is
not ours to read or write. Databases migrated before that kept our revision in
``alembic_version``: ``migrate`` adopts it (see ``_adopt_old_version_table``).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, column, inspect, select, table, text

from morag_jobs.errors import MoragJobsError
from morag_jobs.logs import get_logger

__all__ = [
    "MIGRATIONS_DIR",
    "OLD_VERSION_TABLE",
    "VERSION_TABLE",
    "MigrationFailed",
    "alembic_config",
    "current_revision",
    "head_revision",
    "migrate",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "morag_jobs_alembic_version"
"""Where our revision is kept: never Alembic's default, which another application may own."""
OLD_VERSION_TABLE = "alembic_version"
"""Where morag-jobs kept its revision before it had a table of its own."""
# Any constant works: it only has to be the same in every process that migrates.
_PG_LOCK_KEY = 0x6D6F726167  # "morag"

log = get_logger(__name__)


class MigrationFailed(MoragJobsError, RuntimeError):
    """Alembic refused to migrate, e.g. the database is at a revision this version does not ship."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision``; concurrent callers wait instead of colliding.

    Alembic's own errors leave as ``MigrationFailed`` with their first line; the
    driver's propagate (the store translates them).
    """
    try:
        with engine.connect() as connection, connection.begin():
            _lock(connection)
            _adopt_old_version_table(connection)
            command.upgrade(alembic_config(connection), revision)
    except CommandError as error:
        raise MigrationFailed(_explain(error)) from error


def _explain(error: CommandError) -> str:
    message = str(error).strip()
    reason = message.splitlines()[0] if message else type(error).__name__
    if reason.startswith("Can't locate revision"):
        reason += (f" in {VERSION_TABLE}: the database was migrated by a newer morag-jobs; "
                   "upgrade morag-jobs")
    return f"cannot migrate the job database: {reason}"


def _lock(connection: Connection) -> None:
    """Serialize migrations: two workers starting on a new database must not both create it."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        # Take SQLite's write lock now (waiting out the busy timeout), so DDL runs in it.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _adopt_old_version_table(connection: Connection) -> None:
    """Carry our revision over from ``alembic_version``, where versions before the table of
    our own kept it, so an old database is upgraded from where it is, not from nothing.

    Only when our table does not exist yet and ``alembic_version`` holds one of our
    revision ids; another application's ``alembic_version`` (any other id) is left alone.
    An ``alembic_version`` holding nothing but our revision is dropped afterwards: it was
    only ever our bookkeeping, and left behind it would be stale after the next migration
    and would make the next application to adopt Alembic here fail on "Can't locate
    revision 0004", the very crash the table of our own avoids. (A table that also holds
    other ids is another application's too, and stays untouched.)
    """
    inspector = inspect(connection)
    if inspector.has_table(VERSION_TABLE) or not inspector.has_table(OLD_VERSION_TABLE):
        return
    old = table(OLD_VERSION_TABLE, column("version_num"))
    found = set(connection.execute(select(old.c.version_num)).scalars())
    script = ScriptDirectory.from_config(alembic_config())
    # Newest first, so a (corrupt) table holding several of ours resumes from the newest.
    ours = [rev.revision for rev in script.walk_revisions() if rev.revision in found]
    if not ours:
        return
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    context.stamp(script, ours[0])
    if found == set(ours):
        connection.execute(text(f"DROP TABLE {OLD_VERSION_TABLE}"))
    log.info("adopted the revision morag-jobs kept in alembic_version", revision=ours[0],
             dropped=found == set(ours))


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, None when it was never migrated."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
