"""The test suite refuses to run against data that may not be its own, and leaves it untouched.

Each test points a real ``pytest`` at someone else's database or Redis db, holding a sentinel
row or key, and checks that pytest stopped with a message naming it and that the data is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from sqlalchemy.engine import URL

from tests.conftest import DATABASE, PG_ADMIN_URL, REDIS_OWNER_KEY, TEST_BROKER_URL

REPO = Path(__file__).resolve().parents[2]
# Tests that drop, create and TRUNCATE their database and FLUSHDB their Redis db.
DESTRUCTIVE = ["tests/integration/test_schema.py", "tests/integration/test_fraud_velocity.py"]
# Where a refusal that failed would run: a database of this suite's own.
OWN_DATABASE = DATABASE.set(database=f"{DATABASE.database}_refusal")


def pytest_pointed_at(database: URL, broker_url: str,
                      *targets: str) -> subprocess.CompletedProcess[str]:
    """A fresh ``pytest`` run whose only knobs are the two test URLs (no xdist, no addopts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ORDERFLEET_"))}
    env["ORDERFLEET_TEST_DATABASE_URL"] = database.render_as_string(hide_password=False)
    env["ORDERFLEET_TEST_BROKER_URL"] = broker_url
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           *targets], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def refused(run: subprocess.CompletedProcess[str], message: str) -> bool:
    out = run.stdout + run.stderr
    return run.returncode == pytest.ExitCode.USAGE_ERROR and \
        "orderfleet tests refuse to run" in out and message in out


@pytest.fixture
def shop_database(pg_database: object) -> Iterator[URL]:
    """A store's database (its name says nothing of tests) with one order in it."""
    name = f"orderfleet_shop_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = DATABASE.set(database=name)
    try:
        with psycopg.connect(_dsn(url)) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
            conn.execute("INSERT INTO orders VALUES (42)")
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_database_not_named_for_tests_is_refused_and_left_alone(
        shop_database: URL, redis_client: redis.Redis) -> None:
    # When pytest is pointed at a store's database
    run = pytest_pointed_at(shop_database, TEST_BROKER_URL, *DESTRUCTIVE)

    # then it refuses, naming the database, and the store's order is still there
    assert refused(run, f'database "{shop_database.database}" is not marked for tests'), run
    with psycopg.connect(_dsn(shop_database)) as conn:
        assert conn.execute("SELECT id FROM orders").fetchall() == [(42,)]


def test_redis_db_0_is_refused_and_left_alone(redis_client: redis.Redis) -> None:
    # Given a key in Redis db 0 (on a developer's machine, the default db of everything)
    db0_url = urlsplit(TEST_BROKER_URL)._replace(path="/0").geturl()
    sentinel = f"orderfleet:refusal-sentinel:{uuid.uuid4().hex}"
    with redis.Redis.from_url(db0_url) as db0:
        db0.set(sentinel, "keep me", ex=600)
        try:
            # when pytest is pointed at db 0 (to run unit tests only, should it not refuse)
            run = pytest_pointed_at(OWN_DATABASE, db0_url, "tests/unit/test_lifecycle.py")

            # then it refuses, naming db 0, and the key is still there
            assert refused(run, "Redis db 0 is where"), run
            assert db0.get(sentinel) == b"keep me"
        finally:
            db0.delete(sentinel)


def test_a_redis_db_holding_someone_elses_keys_is_refused_and_left_alone(
        redis_client: redis.Redis) -> None:
    # Given this suite's Redis db taken over by someone else: their key, and no tests' marker
    redis_client.delete(REDIS_OWNER_KEY)
    redis_client.set("shop:session:1", "alice")

    # when pytest is pointed at it
    run = pytest_pointed_at(OWN_DATABASE, TEST_BROKER_URL, *DESTRUCTIVE)

    # then it refuses, naming the db, and their key is still there
    db = urlsplit(TEST_BROKER_URL).path.lstrip("/")
    assert refused(run, f"Redis db {db} at "), run
    assert redis_client.get("shop:session:1") == b"alice"
    assert redis_client.get(REDIS_OWNER_KEY) is None


def test_worker_processes_get_the_test_workers_services_and_none_of_the_developers() -> None:
    # Given a developer who exported the fleet's variables, and pytest -n 2's second worker
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ORDERFLEET_"))}
    env.update({
        "ORDERFLEET_DATABASE_URL": "postgresql+psycopg://shop@127.0.0.1:5432/shop",
        "ORDERFLEET_BROKER_URL": "redis://127.0.0.1:6379/0",
        "ORDERFLEET_SHARED_REDIS_URL": "redis://127.0.0.1:6379/0",
        "ORDERFLEET_FRAUD_REDIS_URL": "redis://127.0.0.1:6379/0",
        "ORDERFLEET_CARRIER_URL": "https://carrier.example",
        "ORDERFLEET_TEST_DATABASE_URL": "postgresql+psycopg://t:pw@127.0.0.1:5432/fleet_test",
        "ORDERFLEET_TEST_BROKER_URL": "redis://127.0.0.1:6379/9",
        "PYTEST_XDIST_WORKER": "gw1",
    })

    # when the test settings are loaded and a fleet's environment is made from them (as the
    # end-to-end tests do; nothing connects anywhere)
    script = ("import json, tests.conftest; from config.settings import get_settings; "
              "from workers.fleet import Fleet; print(json.dumps(Fleet(get_settings()).env))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    fleet_env = json.loads(out.stdout)

    # then the worker processes get that test worker's database and Redis db, and nothing of
    # the developer's
    assert fleet_env["ORDERFLEET_DATABASE_URL"] == \
        "postgresql+psycopg://t:pw@127.0.0.1:5432/fleet_test_gw1"
    assert fleet_env["ORDERFLEET_BROKER_URL"] == "redis://127.0.0.1:6379/10"
    assert "ORDERFLEET_SHARED_REDIS_URL" not in fleet_env
    assert "ORDERFLEET_FRAUD_REDIS_URL" not in fleet_env
    assert fleet_env["ORDERFLEET_CARRIER_URL"] == "http://127.0.0.1:8765"
