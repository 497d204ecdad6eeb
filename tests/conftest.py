"""Shared fixtures: a real PostgreSQL database and a real Redis, never eager mode.

A missing service skips the tests that need it on a laptop, and fails them on CI (CI=true).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("ORDERFLEET_TEST_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_DB = os.environ.get("ORDERFLEET_TEST_DB_NAME", "orderfleet_test")
TEST_DATABASE_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEST_DB}"
# A Redis database of its own, so tests never touch a running demo's queues.
TEST_BROKER_URL = os.environ.get("ORDERFLEET_TEST_BROKER_URL", "redis://127.0.0.1:6379/13")

# Settings are read from the environment by every process, workers included: set them before
# anything imports the project.
os.environ.setdefault("ORDERFLEET_DATABASE_URL", TEST_DATABASE_URL)
os.environ.setdefault("ORDERFLEET_BROKER_URL", TEST_BROKER_URL)
os.environ.setdefault("ORDERFLEET_VAR_DIR", str(Path(__file__).resolve().parent.parent
                                                / "var" / "test"))


def _missing(service: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{service} is not reachable (CI requires it: run scripts/ensure-services.sh)")
    pytest.skip(f"{service} is not reachable")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def settings():  # type: ignore[no-untyped-def]
    from config.settings import get_settings

    get_settings.cache_clear()
    import workers.app  # noqa: F401 - the composition root: installs how tasks are sent

    return get_settings()


@pytest.fixture(scope="session")
def pg_database(settings):  # type: ignore[no-untyped-def]
    """A freshly migrated test database (Alembic, as in production)."""
    if not _port_open(5432):
        _missing("PostgreSQL")
    import psycopg
    from sqlalchemy import text

    from domain.db import dispose_engines, get_engine
    from domain.migrate import upgrade

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEST_DB}"')
    upgrade(settings)
    yield get_engine(settings)
    with get_engine(settings).begin() as conn:
        conn.execute(text("SELECT 1"))
    dispose_engines()


@pytest.fixture
def db(pg_database, settings) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """An empty database for each test (TRUNCATE is fast and leaves the schema)."""
    from sqlalchemy import text

    from domain.models import Base

    # Every table the models declare, never Alembic's version table.
    tables = ", ".join(Base.metadata.tables)
    with pg_database.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield pg_database


@pytest.fixture
def redis_client(settings):  # type: ignore[no-untyped-def]
    import redis

    client = redis.Redis.from_url(settings.broker_url)
    try:
        client.ping()
    except redis.ConnectionError:
        _missing("Redis")
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def broker(redis_client):  # type: ignore[no-untyped-def]
    """A real, empty Redis broker; tasks sent here wait in their queues for inspection."""
    return redis_client


@pytest.fixture(scope="session")
def sandbox_carrier() -> Iterator[str]:
    """The sandbox carrier as a real HTTP server process; a carrier hour passes in 0.1 s."""
    from tests.integration.helpers import sandbox_carrier_process

    with sandbox_carrier_process("--time-scale", "36000") as url:
        yield url


@pytest.fixture
def carrier(sandbox_carrier):  # type: ignore[no-untyped-def]
    """A client of the sandbox carrier, reset for each test."""
    from domain.carriers import CarrierClient

    with CarrierClient(sandbox_carrier, timeout_s=5, retry_max_s=5) as client:
        client.reset()
        yield client
