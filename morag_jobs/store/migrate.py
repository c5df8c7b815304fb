"""Run the packaged Alembic migrations, configured in code: no ``alembic.ini`` at run time."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

__all__ = ["MIGRATIONS_DIR", "alembic_config", "current_revision", "head_revision", "migrate"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works: it only has to be the same in every process that migrates.
_PG_LOCK_KEY = 0x6D6F726167  # "morag"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision``; concurrent callers wait instead of colliding."""
    with engine.connect() as connection, connection.begin():
        _lock(connection)
        command.upgrade(alembic_config(connection), revision)


def _lock(connection: Connection) -> None:
    """Serialize migrations: two workers starting on a new database must not both create it."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        # Take SQLite's write lock now (waiting out the busy timeout), so DDL runs in it.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, None when it was never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
