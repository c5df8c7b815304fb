"""Shared fixtures: the real services (PostgreSQL, Redis) and temporary databases.

Tests that need a service skip with the reason when it is down, unless
``MORAG_REQUIRE_SERVICES=1`` (CI), where a missing service fails the test instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import (
    REDIS_URL,
    admin_engine,
    create_database,
    drop_database,
    fresh_postgres_schema,
    own_redis_keys,
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    admin = admin_engine()
    url, name = create_database(admin, "morag_test")
    try:
        yield url
    finally:
        drop_database(admin, name)
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
    return fresh_postgres_schema(base)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis database 15, flushed before and after the test."""
    with own_redis_keys(REDIS_URL):
        yield REDIS_URL
