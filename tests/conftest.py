"""Shared fixtures: the real services (PostgreSQL, Redis) and temporary databases.

Tests that need a service skip with the reason when it is down, unless
``MORAG_REQUIRE_SERVICES=1`` (CI), where a missing service fails the test instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy

REQUIRE_SERVICES = os.environ.get("MORAG_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "MORAG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MORAG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def service_missing(name: str, error: BaseException) -> None:
    """Skip (or, under MORAG_REQUIRE_SERVICES=1, fail) because a service is down."""
    message = f"{name} is not reachable: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (MORAG_REQUIRE_SERVICES=1 makes this a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    pytest.importorskip("psycopg")
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"morag_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as error:
        admin.dispose()
        service_missing("PostgreSQL", error)
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path}/jobs.db"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    base = str(request.getfixturevalue("postgres_url"))
    return _fresh_postgres_schema(base)


def _fresh_postgres_schema(base_url: str) -> str:
    """A new schema inside the session database, so tests never see each other's rows."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(base_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis database 15, flushed before and after the test."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as error:
        service_missing("Redis", error)
    yield REDIS_URL
    client.flushdb()
    client.close()
