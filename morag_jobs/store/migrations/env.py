"""Alembic environment: migrates the connection ``morag_jobs.store.migrate`` hands over.

Run through ``JobStore.upgrade()`` or ``morag-jobs db upgrade``; no ``alembic.ini`` is needed.
The plain ``alembic`` command works too, with ``sqlalchemy.url`` set in its config.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from morag_jobs.store.migrate import VERSION_TABLE
from morag_jobs.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**options: object) -> None:
    # Our own version table: another application's Alembic keeps the default one.
    context.configure(target_metadata=target_metadata, compare_type=True,
                      version_table=VERSION_TABLE, **options)


def run_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: Connection) -> None:
    # SQLite alters tables by copying them ("batch mode").
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        run_offline()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        run_online(connection)
        return
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")), poolclass=NullPool)
    with engine.begin() as own_connection:
        run_online(own_connection)
    engine.dispose()


main()
