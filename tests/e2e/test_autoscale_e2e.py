"""``orderfleet worker --autoscale MAX,MIN`` grows its pool under reserved work and shrinks it
when idle, with prefetch 1 and late acks (celery #4003 once kept it from growing)."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from domain.db import send_task
from tests.waiting import eventually

pytestmark = pytest.mark.e2e


def pool_size(app: Any, node: str) -> int | None:
    stats = app.control.inspect(destination=[node], timeout=1.0).stats() or {}
    pool = (stats.get(node) or {}).get("pool") or {}
    return len(pool.get("processes", [])) if pool else None


def test_an_autoscaled_worker_grows_to_max_under_load_and_shrinks_to_min(
        start_fleet, settings, monkeypatch) -> None:
    from workers.app import app

    # Given an idle worker started as an operator would, with --autoscale 3,1 (and a short
    # keep-alive before shrinking, instead of Celery's 30 s)
    monkeypatch.setenv("AUTOSCALE_KEEPALIVE", "2")
    fleet = start_fleet(workers=0, beat=False)
    node = f"autoscaled-{os.getpid()}@localhost"
    fleet._spawn("autoscaled", [sys.executable, "-m", "workers.cli", "worker", "--autoscale",
                                "3,1", "-Q", "bench", "--loglevel", "info", "-n", node])
    eventually(lambda: pool_size(app, node) == 1, 60, "the worker to start with 1 process")
    # When six tasks that each hold a slot for a few seconds arrive
    for i in range(6):
        send_task("orderfleet.bench.noop", i, 0, False, 4.0)
    # Then the pool grows to its maximum, and once idle shrinks back to its minimum
    eventually(lambda: pool_size(app, node) == 3, 60, "the pool to grow to 3")
    eventually(lambda: pool_size(app, node) == 1, 90, "the pool to shrink to 1")
