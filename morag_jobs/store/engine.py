"""Engines for the job table: SQLite that many processes can write, PostgreSQL that reconnects."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from morag_jobs._extras import PROVIDED_BY, MissingExtra

__all__ = [
    "SQLITE_BUSY_TIMEOUT_S",
    "create_store_engine",
    "masked_url",
    "parse_url",
    "sqlite_file",
]

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


def sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL names (relative to the working directory, as SQLite opens it);
    None for other databases and in-memory SQLite. Asking creates nothing."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if str(url.query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        if url.query.get("mode") == "memory":
            return None
        database = unquote(urlsplit(database).path)
    return Path(database) if database not in ("", ":memory:") else None


def create_store_engine(url: URL, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys per connection.

    A driver that is not installed is one line naming the extra that installs it
    (``MissingExtra``), or a ``ValueError`` for a driver no extra of ours installs.
    """
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo=echo)
    try:
        return create_engine(url, echo=echo, pool_pre_ping=True)
    except ImportError as error:  # SQLAlchemy imports the driver here, not on connect
        _missing_driver(url, error)


_DATABASES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mssql": "SQL Server"}


def _missing_driver(url: URL, error: ImportError) -> NoReturn:
    """Raise the one-line error for a driver that cannot be imported; the import's own
    traceback (SQLAlchemy's dialect machinery, ~45 lines) says nothing more."""
    database = _DATABASES.get(url.get_backend_name(), url.get_backend_name())
    module = (error.name or "").partition(".")[0]
    if isinstance(error, ModuleNotFoundError) and module in PROVIDED_BY:
        raise MissingExtra(database, PROVIDED_BY[module], [module]) from None
    text = str(error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    raise ValueError(f"{database} needs the {url.get_driver_name()} driver, which cannot "
                     f"be imported: {reason}") from None


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
