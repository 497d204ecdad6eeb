"""The demo's fleet, logging at info level, writes none of its synthetic customers' e-mail
addresses, phone numbers or street addresses: task arguments are ids, log lines name orders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sandbox.synthetic import generate_labelled_orders
from tests.waiting import eventually
from workers.fleet import free_port

pytestmark = pytest.mark.e2e

ORDERS, SEED = 120, 3
PERSONAL_KEYS = {"email", "contact_email", "phone", "line1", "line2", "address1", "address2"}


def personal_values(payload: Any) -> set[str]:
    """Every e-mail, phone and street line in a payload, wherever the platform puts it."""
    found: set[str] = set()
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key in PERSONAL_KEYS and isinstance(value, str) and len(value.strip()) >= 6:
                found.add(value.strip())
            else:
                found |= personal_values(value)
    elif isinstance(payload, list):
        for item in payload:
            found |= personal_values(item)
    return found


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A redis-server of this test's own: the demo empties its Redis db."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server missing")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    def up() -> bool:
        try:
            return bool(redis.Redis.from_url(url).ping())
        except redis.ConnectionError:
            return False

    try:
        eventually(up, 15, "redis-server")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_demo_logs_no_customer_email_phone_or_address_at_info(own_redis,
                                                                  tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLEET_")}
    env["ORDERFLEET_BROKER_URL"] = own_redis
    # when the demo runs with info-level logs (its database and logs under tmp_path/var)
    result = subprocess.run(
        [sys.executable, "-m", "workers.cli", "demo", "--orders", str(ORDERS), "--seed",
         str(SEED), "--workers", "1", "--no-flower", "--json", "--loglevel", "info"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = {p.name: p.read_text(errors="replace")
            for p in (tmp_path / "var" / "logs").glob("*.log")}
    assert {"worker1.log", "beat.log", "api.log", "carrier.log"} <= set(logs)
    assert "INFO" in logs["worker1.log"]  # info level was on: the check has something to read

    # then none of the customers' personal data is in any log, nor in the demo's own output
    personal = set().union(*(personal_values(p) for _, p in
                             generate_labelled_orders(ORDERS, seed=SEED)))
    assert len(personal) > ORDERS  # e-mails, phones and street lines of every customer
    output = result.stdout + result.stderr
    leaks = {(name, value) for value in personal
             for name, text in [*logs.items(), ("demo output", output)] if value in text}
    assert not leaks, sorted(leaks)[:10]
