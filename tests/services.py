"""The real services the tests use, and throw-away databases on them.

Imported by conftest.py (fixtures) and by test modules that need a database of their
own. Tests that need a service skip with the reason when it is down, unless
``MORAG_REQUIRE_SERVICES=1`` (CI), where a missing service fails the test instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import sqlalchemy
from sqlalchemy.pool import NullPool

from morag_jobs import JobStore

REQUIRE_SERVICES = os.environ.get("MORAG_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "MORAG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _private_redis() -> str | None:
    """A throw-away redis-server on a free port, stopped when the test session ends.

    The machine's Redis is shared with other work: the tests flush the databases they
    use, so they use a server of their own. Worker processes the tests start inherit
    its address through the environment and never start another.
    """
    server = shutil.which("redis-server")
    if server is None:
        return None
    directory = tempfile.mkdtemp(prefix="morag-test-redis-")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    starter = os.getpid()

    def stop() -> None:
        if os.getpid() == starter:  # not from a forked child that happens to exit
            process.terminate()
            process.wait(10)
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}"
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
        finally:
            client.close()
    return None


if "MORAG_TEST_REDIS_URL" not in os.environ and (_OWN := _private_redis()) is not None:
    os.environ["MORAG_TEST_REDIS_URL"] = f"{_OWN}/15"
    os.environ.setdefault("MORAG_TEST_CELERY_BROKER_URL", f"{_OWN}/14")
REDIS_URL = os.environ.get("MORAG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def service_missing(name: str, error: BaseException) -> None:
    """Skip (or, under MORAG_REQUIRE_SERVICES=1, fail) because a service is down."""
    message = f"{name} is not reachable: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (MORAG_REQUIRE_SERVICES=1 makes this a failure)")
    pytest.skip(message)


def admin_engine() -> sqlalchemy.Engine:
    """AUTOCOMMIT, on the ``postgres`` database: for creating and dropping databases."""
    return sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT",
                                    poolclass=NullPool)


def create_database(admin: sqlalchemy.Engine, prefix: str) -> tuple[str, str]:
    """A new, empty database: its URL and its name (skip or fail when PostgreSQL is down)."""
    pytest.importorskip("psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as error:
        service_missing("PostgreSQL", error)
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", name


def drop_database(admin: sqlalchemy.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_postgres_schema(base_url: str, *, migrate: bool = False) -> str:
    """A new schema inside the database at ``base_url``; the returned URL selects it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(base_url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()
    separator = "&" if "?" in base_url else "?"
    url = f"{base_url}{separator}options=-csearch_path%3D{schema}"
    if migrate:
        with JobStore(url, create_tables=True) as store:
            store.upgrade()
    return url


@contextmanager
def own_redis_keys(url: str) -> Iterator[redis.Redis]:
    """A client on the Redis database at ``url``; the keys the block created are deleted
    after it, and nothing else: the database may hold someone else's data.

    ``url`` is normally on the tests' own server (see ``_private_redis``); even so, no
    test empties a database, so a ``MORAG_TEST_REDIS_URL`` on a shared server is safe.
    """
    client = redis.Redis.from_url(url)
    try:
        before = set(client.scan_iter(count=1000))
    except redis.exceptions.ConnectionError as error:
        client.close()
        service_missing("Redis", error)
    try:
        yield client
    finally:
        created = [key for key in client.scan_iter(count=1000) if key not in before]
        if created:
            client.delete(*created)
        client.close()
