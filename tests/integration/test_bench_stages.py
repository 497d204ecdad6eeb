"""``orderfleet bench stages``: every stage of the real pipeline, CPU per order each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workers.fleet import free_port

# Both benchmarks empty and use the bench's Redis db of the test Redis server: one at a time.
pytestmark = pytest.mark.xdist_group("bench-redis-db")


def test_bench_stages_labels_every_order_and_reports_each_stage(broker, settings,
                                                                tmp_path) -> None:
    # Given the profiler in a process of its own (it makes the bench's settings its own), on
    # SQLite and the bench's Redis db of the test Redis server
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLEET_")}
    env["ORDERFLEET_BROKER_URL"] = settings.broker_url
    db_url = f"sqlite:///{tmp_path / 'bench-stages.db'}"
    # When 60 orders go through every stage after 20 of warm-up
    run = subprocess.run(
        [sys.executable, "-m", "workers.cli", "bench", "stages", "--orders", "60", "--warmup",
         "20", "--database-url", db_url, "--carrier-port", str(free_port()), "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    # Then each stage has its CPU figure, and the measured orders all got a label
    assert list(figures["stages"]) == ["intake", "fraud", "inventory", "sharding", "labels"]
    for stage in figures["stages"].values():
        assert stage["ms_per_order"] > 0
        assert stage["wall_ms_per_order"] >= 0
    # Then every measured order is accounted for: labelled, or (now and then) held for review
    assert sum(figures["by_state"].values()) == 60
    assert set(figures["by_state"]) <= {"labelled", "on_hold"}
    assert figures["labelled"] >= 55
    assert figures["waves"] >= 2  # waves of 50: one closed by size, the rest by the sweep
    assert figures["total_ms_per_order"] > 0
