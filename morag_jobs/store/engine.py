"""Engines for the job table: SQLite that many processes can write, PostgreSQL that reconnects."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

__all__ = ["SQLITE_BUSY_TIMEOUT_S", "create_store_engine", "masked_url", "parse_url"]

SQLITE_BUSY_TIMEOUT_S = 30.0


def parse_url(url: str) -> URL:
    """Parse ``url``; ``postgres://``/``postgresql://`` mean psycopg 3, the driver we ship for."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # SQLAlchemy's message repeats the string, password and all.
        raise ValueError("not a database URL (expected e.g. sqlite:///morag_jobs.db)") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked_url(url: URL) -> str:
    """``url`` with its password replaced by ``***``: safe for logs, reprs and errors."""
    return url.render_as_string(hide_password=True)


def create_store_engine(url: URL, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys per connection."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo=echo)
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    options: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if url.database in (None, "", ":memory:"):
        # One shared connection, or every thread would see its own empty database.
        options = {
            "connect_args": {"check_same_thread": False},
            "poolclass": StaticPool,
        }
    engine = create_engine(url, echo=echo, **options)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside a writer; the busy timeout makes writers wait, not fail."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``journal_mode = WAL``, retried: on a brand-new file that several processes open at
    once, SQLite can refuse the switch with "database is locked" without waiting out the
    busy timeout. The mode is stored in the file, so once one process switched it, the
    others' pragma is a no-op."""
    for attempt in range(50):
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == 49:
                raise
            time.sleep(0.05 + 0.01 * attempt)
