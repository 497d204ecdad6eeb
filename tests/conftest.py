"""Shared fixtures: a real PostgreSQL database and a real Redis, never eager mode.

The tests use their own database and Redis db and never the fleet's: a developer's exported
``ORDERFLEET_*`` variables may point at data that matters, and the tests TRUNCATE and FLUSHDB.
The only knobs are ``ORDERFLEET_TEST_DATABASE_URL`` and ``ORDERFLEET_TEST_BROKER_URL``; a
database whose name does not say "test", Redis db 0, or a Redis db holding someone else's keys
makes pytest stop before touching anything. Under ``pytest -n N`` worker ``gwK`` gets database
``<name>_gwK`` and Redis db ``<db> + K``.

A missing service skips the tests that need it on a laptop, and fails them on CI (CI=true).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from sqlalchemy.engine import URL, make_url

DEFAULT_TEST_DATABASE_URL = ("postgresql+psycopg://orderfleet_test:orderfleet_test"
                             "@127.0.0.1:5432/orderfleet_test")
DEFAULT_TEST_BROKER_URL = "redis://127.0.0.1:6379/10"
# Written into every Redis db the tests use: a db without it that holds keys is not theirs.
REDIS_OWNER_KEY, REDIS_OWNER = "orderfleet:owner", "tests"  # workers.fleet.OWNER_KEY
HIGHEST_REDIS_DB = 15


def xdist_index(worker: str) -> int:
    """0 for gw0 (and for a run without xdist), 1 for gw1, ..."""
    return int(worker.removeprefix("gw")) if worker else 0


def database_url_for(base: str, worker: str) -> URL:
    """The worker's database: the base URL's, suffixed ``_gwN`` under xdist."""
    url = make_url(base)
    return url.set(database=f"{url.database}_{worker}") if worker else url


def redis_db_for(base: str, index: int) -> tuple[str, int]:
    """The URL and number of the Redis db of xdist worker ``index``: the base db + index."""
    parts = urlsplit(base)
    db = int(parts.path.lstrip("/") or 0) + index
    return parts._replace(path=f"/{db}").geturl(), db


def refusals(database: URL, broker_base: str, workers: int) -> list[str]:
    """Why these URLs must not be used by the tests (nothing connects to find out)."""
    problems = []
    if not database.drivername.startswith("postgresql"):
        problems.append(f"ORDERFLEET_TEST_DATABASE_URL must be a PostgreSQL URL, not "
                        f"{database.drivername}")
    elif "test" not in (database.database or "").lower():
        problems.append(f'database "{database.database}" is not marked for tests: the tests '
                        'drop and re-create their database, so its name must contain "test" '
                        "(set ORDERFLEET_TEST_DATABASE_URL)")
    parts = urlsplit(broker_base)
    if parts.scheme not in ("redis", "rediss") or "db" in parse_qs(parts.query):
        problems.append("ORDERFLEET_TEST_BROKER_URL must be a redis:// URL with the db in its "
                        f"path (redis://host:port/N), not {broker_base}")
        return problems
    try:
        first = redis_db_for(broker_base, 0)[1]
    except ValueError:
        return [*problems, f"ORDERFLEET_TEST_BROKER_URL has no db number: {broker_base}"]
    if first == 0:
        problems.append("Redis db 0 is where a Redis's own data usually lives and the tests "
                        "FLUSHDB theirs: give ORDERFLEET_TEST_BROKER_URL another db "
                        "(redis://host:port/10)")
    last = first + workers - 1
    if last > HIGHEST_REDIS_DB:
        problems.append(f"{workers} test worker(s) need Redis dbs {first}..{last}; above "
                        f"{HIGHEST_REDIS_DB} is refused: lower the db in "
                        "ORDERFLEET_TEST_BROKER_URL or run fewer workers")
    return problems


WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under pytest -n N
BASE_DATABASE_URL = os.environ.get("ORDERFLEET_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
BASE_BROKER_URL = os.environ.get("ORDERFLEET_TEST_BROKER_URL", DEFAULT_TEST_BROKER_URL)
DATABASE = database_url_for(BASE_DATABASE_URL, WORKER)
TEST_DB = DATABASE.database or ""
TEST_DATABASE_URL = DATABASE.render_as_string(hide_password=False)
# The tests create and drop their database as the same role, connected to "postgres".
PG_ADMIN_URL = DATABASE.set(drivername="postgresql", database="postgres").render_as_string(
    hide_password=False)
try:
    TEST_BROKER_URL = redis_db_for(BASE_BROKER_URL, xdist_index(WORKER))[0]
except ValueError:  # no db number: pytest_configure refuses it
    TEST_BROKER_URL = BASE_BROKER_URL

# Settings are read from the environment by every process, workers included: set them before
# anything imports the project. Every other fleet variable is dropped, so nothing the tests or
# their worker processes read (a shared or fraud Redis, a carrier, secrets) is the developer's.
for _name in [n for n in os.environ if n.startswith("ORDERFLEET_")
              and not n.startswith("ORDERFLEET_TEST_")]:
    del os.environ[_name]
os.environ["ORDERFLEET_DATABASE_URL"] = TEST_DATABASE_URL
os.environ["ORDERFLEET_BROKER_URL"] = TEST_BROKER_URL
os.environ["ORDERFLEET_VAR_DIR"] = str(Path(__file__).resolve().parent.parent / "var" / "test"
                                       / (WORKER or "main"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The stand-ins a fleet starts for non-core jobs (SMTP sink, marketing list) listen on ports of
# the tests' own: the defaults may be taken by a developer's running fleet or another run.
os.environ["ORDERFLEET_SMTP_PORT"] = str(_free_port())
os.environ["ORDERFLEET_MARKETING_URL"] = f"http://127.0.0.1:{_free_port()}"


def redis_db_problem(url: str) -> str | None:
    """Mark the db as the tests' own if it is empty; why not, if it holds someone else's keys.

    None also when Redis is not reachable: the tests that need it skip (or fail on CI).
    """
    from workers.fleet import ForeignData, claim_redis_db

    try:
        claim_redis_db(url, REDIS_OWNER)
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    except ForeignData as exc:
        return (f"{exc}. The tests would FLUSHDB it: point ORDERFLEET_TEST_BROKER_URL at an "
                "empty db (the tests mark it as theirs); if a killed test run left these keys, "
                "empty the db yourself.")
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Refuse, before anything is touched, to run against data that may not be the tests'."""
    if WORKER:
        return  # the controlling process checked every worker's database and Redis db
    # With -n N (pytest-xdist), the N workers' Redis dbs are checked here, before any starts.
    distributed = config.getoption("dist", "no") != "no"
    workers = max(len(config.getoption("tx", None) or []), 1) if distributed else 1
    problems = refusals(DATABASE, BASE_BROKER_URL, workers)
    if not problems:
        for index in range(workers):
            problem = redis_db_problem(redis_db_for(BASE_BROKER_URL, index)[0])
            if problem:
                problems.append(problem)
    if problems:
        raise pytest.UsageError("orderfleet tests refuse to run:\n  " + "\n  ".join(problems))


def _missing(service: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{service} is not reachable (CI requires it: run scripts/ensure-services.sh)")
    pytest.skip(f"{service} is not reachable")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def settings():
    from config.settings import get_settings

    get_settings.cache_clear()
    import workers.app  # noqa: F401 - the composition root: installs how tasks are sent

    return get_settings()


@pytest.fixture(scope="session")
def pg_database(settings):
    """A freshly migrated test database (Alembic, as in production)."""
    if not _port_open(DATABASE.host or "127.0.0.1", DATABASE.port or 5432):
        _missing("PostgreSQL")
    import psycopg
    from sqlalchemy import text

    from domain.db import dispose_engines, get_engine
    from domain.migrate import upgrade

    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{TEST_DB}"')
    except psycopg.errors.InsufficientPrivilege as e:
        pytest.fail(f'the test role {DATABASE.username} cannot re-create database "{TEST_DB}" '
                    f"({e}): drop it as its owner or set ORDERFLEET_TEST_DATABASE_URL to "
                    "another name", pytrace=False)
    except psycopg.OperationalError as e:  # no such role, wrong password
        _missing(f"PostgreSQL as {DATABASE.username} (scripts/ensure-services.sh creates the "
                 f"role: {str(e).strip()})")
    upgrade(settings)
    yield get_engine(settings)
    with get_engine(settings).begin() as conn:
        conn.execute(text("SELECT 1"))
    dispose_engines()


@pytest.fixture
def db(pg_database, settings) -> Iterator[object]:
    """An empty database for each test (TRUNCATE is fast and leaves the schema)."""
    from sqlalchemy import text

    from domain.models import Base

    # Every table the models declare, never Alembic's version table.
    tables = ", ".join(Base.metadata.tables)
    with pg_database.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield pg_database


@pytest.fixture
def redis_client(settings):
    client = redis.Redis.from_url(settings.broker_url)
    try:
        client.ping()
    except redis.ConnectionError:
        _missing("Redis")
    client.flushdb()
    yield client
    # Empty again, and marked as the tests' own for the next run's check: a run killed in the
    # middle of a test leaves keys without the mark, and the next run refuses the db.
    client.flushdb()
    client.set(REDIS_OWNER_KEY, REDIS_OWNER)


@pytest.fixture
def broker(redis_client):
    """A real, empty Redis broker; tasks sent here wait in their queues for inspection."""
    return redis_client


@pytest.fixture(scope="session")
def sandbox_carrier() -> Iterator[str]:
    """The sandbox carrier as a real HTTP server process; a carrier hour passes in 0.1 s."""
    from tests.integration.helpers import sandbox_carrier_process

    with sandbox_carrier_process("--time-scale", "36000") as url:
        yield url


@pytest.fixture
def carrier(sandbox_carrier):
    """A client of the sandbox carrier, reset for each test."""
    from domain.carriers import CarrierClient

    with CarrierClient(sandbox_carrier, timeout_s=5, retry_max_s=5) as client:
        client.reset()
        yield client
