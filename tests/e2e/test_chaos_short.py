"""The chaos suite's short form: every scenario against a supervised fleet with its own Redis
and PostgreSQL, and nothing lost, charged twice, reserved twice or oversold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.chaos import SCENARIOS, ChaosOptions

pytestmark = pytest.mark.e2e


def test_every_scenario_loses_nothing_and_does_nothing_twice(tmp_path) -> None:
    if not (shutil.which("redis-server") and (shutil.which("initdb") or
                                              any(os.scandir("/usr/lib/postgresql")))):
        if os.environ.get("CI"):
            pytest.fail("orderfleet chaos needs redis-server and PostgreSQL's initdb")
        pytest.skip("redis-server or initdb missing")
    # A process of its own: the chaos run loads the Celery app with its own broker.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLEET_")}
    result = subprocess.run([sys.executable, "-m", "workers.cli", "chaos", "--short", "--json"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    rows = {r["name"]: r for r in report["scenarios"]}
    assert set(rows) == set(SCENARIOS)
    for name, row in rows.items():
        assert row["orders"] == ChaosOptions().short().orders, name
        assert (row["lost"], row["duplicate_labels"], row["duplicate_reservations"],
                row["oversold_units"], row["stock_drift_units"], row["duplicate_emails"],
                row["emails_missing"]) == (0, 0, 0, 0, 0, 0, 0), row
        assert row["recovered_s"] is not None, row  # every order settled
        # the carrier charged one label per labelled order
        assert row["labels_charged"] == row["shipments_labelled"], row
    assert rows["kill-workers"]["restarts"] >= 1  # the supervisor brought killed workers back
    assert report["ok"] and result.returncode == 0, report
