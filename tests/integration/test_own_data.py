"""Demo, benchmarks and the HTTP service never touch a user's data by accident.

Demo and benchmarks run on a Redis db and a database of their own, whatever ORDERFLEET_*
says; a Redis db that holds someone else's keys is refused untouched. ``orderfleet serve``
refuses to start on an unmigrated database, or beyond loopback without its secrets.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from pydantic import SecretStr

from workers.api import NotReadyToServe, check_ready_to_serve
from workers.fleet import (
    BENCH_REDIS_DB,
    DEMO_REDIS_DB,
    OWNER_KEY,
    Fleet,
    ForeignData,
    claim_redis_db,
    reset_run_database,
    run_settings,
)


def test_a_redis_db_holding_someone_elses_keys_is_refused_untouched(redis_client,
                                                                      settings) -> None:
    # Given a db with a key that is not ours
    redis_client.set("crm:customer:42", "Jo")
    # When a run tries to claim it, fresh
    with pytest.raises(ForeignData, match="holds 1 keys and no orderfleet:owner=demo marker"):
        claim_redis_db(settings.broker_url, "demo", fresh=True)
    # Then nothing was written or removed
    assert redis_client.get("crm:customer:42") == b"Jo"
    assert redis_client.get(OWNER_KEY) is None


def test_a_run_claims_an_empty_db_and_empties_only_its_own(redis_client, settings) -> None:
    claim_redis_db(settings.broker_url, "bench")
    assert redis_client.get(OWNER_KEY) == b"bench"
    redis_client.rpush("fraud", "left over by an earlier run")
    claim_redis_db(settings.broker_url, "bench", fresh=True)
    assert redis_client.keys("*") == [OWNER_KEY.encode()]
    # Another owner's db is not taken over.
    with pytest.raises(ForeignData, match="belongs to orderfleet bench"):
        claim_redis_db(settings.broker_url, "demo", fresh=True)


def test_a_fleet_for_a_run_refuses_a_foreign_db_before_starting_anything(redis_client, settings,
                                                                          tmp_path) -> None:
    redis_client.set("someone:else", "1")
    fleet = Fleet(settings.model_copy(update={"var_dir": tmp_path}), owner="demo",
                  log_dir=tmp_path / "logs")
    with pytest.raises(ForeignData):
        fleet.start()
    assert fleet.procs == {}
    assert redis_client.get("someone:else") == b"1"


def test_run_settings_ignore_the_users_configuration(monkeypatch) -> None:
    # Given a user whose environment points at production and a real carrier account
    monkeypatch.setenv("ORDERFLEET_BROKER_URL", "redis://10.0.0.7:6390/0")
    monkeypatch.setenv("ORDERFLEET_DATABASE_URL", "postgresql://app@db.internal/shop")
    monkeypatch.setenv("ORDERFLEET_CARRIER_API", "easypost")
    monkeypatch.setenv("ORDERFLEET_CARRIER_API_KEY", "EZAK-live-key")
    monkeypatch.setenv("ORDERFLEET_SHARED_REDIS_URL", "redis://10.0.0.7:6390/3")
    # When the demo and a benchmark build their settings
    demo = run_settings("demo", DEMO_REDIS_DB, "sqlite:////tmp/demo.db")
    bench = run_settings("bench", BENCH_REDIS_DB,
                         "postgresql+psycopg://postgres@127.0.0.1:5432/orderfleet_bench")
    # Then they use the same Redis server but their own dbs, and none of the user's settings
    assert demo.broker_url == "redis://10.0.0.7:6390/14" and demo.shared_redis == demo.broker_url
    assert bench.broker_url == "redis://10.0.0.7:6390/15"
    assert demo.database_url == "sqlite:////tmp/demo.db"
    assert demo.carrier_api == "sandbox" and demo.carrier_api_key is None
    # And the process environment is as it was
    assert os.environ["ORDERFLEET_DATABASE_URL"] == "postgresql://app@db.internal/shop"


def test_a_run_refuses_a_database_not_named_for_it() -> None:
    with pytest.raises(ForeignData, match="must contain 'bench'"):
        run_settings("bench", BENCH_REDIS_DB,
                     "postgresql+psycopg://postgres@127.0.0.1:5432/shop")
    shop = run_settings("demo", DEMO_REDIS_DB, "sqlite:////tmp/demo.db").model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:5432/shop"})
    with pytest.raises(ForeignData, match="refusing to wipe"):
        reset_run_database(shop, "demo")


def test_serve_beyond_loopback_needs_the_desk_token_and_the_tracking_secret(db, settings) -> None:
    open_settings = settings.model_copy(update={"review_api_token": None,
                                                "carrier_webhook_secret": None})
    with pytest.raises(NotReadyToServe) as refused:
        check_ready_to_serve(open_settings, "0.0.0.0")
    assert "ORDERFLEET_REVIEW_API_TOKEN" in str(refused.value)
    assert "ORDERFLEET_CARRIER_WEBHOOK_SECRET" in str(refused.value)
    # On loopback the same settings serve (local use), and with both secrets so does 0.0.0.0.
    check_ready_to_serve(open_settings, "127.0.0.1")
    check_ready_to_serve(settings.model_copy(update={
        "review_api_token": "t" * 32, "carrier_webhook_secret": SecretStr("s" * 32)}), "0.0.0.0")


def test_serve_refuses_an_unmigrated_database_naming_the_command(pg_database, settings) -> None:
    # Given an empty database next to the test database
    empty = f"{settings.database_url.rsplit('/', 1)[1]}_empty"
    admin = settings.database_url.rsplit("/", 1)[0].replace("+psycopg", "") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{empty}"')
        conn.execute(f'CREATE DATABASE "{empty}"')
    try:
        url = f"{settings.database_url.rsplit('/', 1)[0]}/{empty}"
        # When orderfleet serve starts on it (a real process)
        env = {**os.environ, "ORDERFLEET_DATABASE_URL": url}
        result = subprocess.run([sys.executable, "-m", "workers.cli", "serve", "--port", "0"],
                                env=env, capture_output=True, text=True, timeout=60)
        # Then it refuses at once, naming what to run
        assert result.returncode != 0
        assert "run `orderfleet db upgrade` first" in result.stderr
    finally:
        from domain.db import dispose_engines

        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{empty}" WITH (FORCE)')
