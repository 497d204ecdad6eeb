"""Ops tooling on a running fleet: the exporter's scrape, Flower behind basic auth with its
API, and the order-health page rendered by headless Chromium (the screenshot is kept)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from domain.clock import utcnow
from domain.lifecycle import LABELLED_OR_LATER
from tasks.intake import submit_orders
from tests.e2e.conftest import state_counts
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually
from workers.fleet import free_port

ARTEFACTS = Path(os.environ.get("ORDERFLEET_TEST_ARTEFACTS",
                                Path(__file__).resolve().parents[2] / "var" / "test-artefacts"))
OPS_USER, OPS_PASSWORD = "ops", "e2e-ops-password"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium missing: run `make tools` (Debian package chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_a_running_fleet_is_observable(start_fleet, settings, tmp_path):
    browser = chromium()
    # Given a fleet with its exporter, Flower and the intake API (which serves /ops/health)
    flower_port = free_port()
    fleet = start_fleet(exporter=True, flower=True, flower_port=flower_port, api=True,
                        api_port=free_port(), metrics_port=free_port(),
                        ops_basic_auth=SecretStr(f"{OPS_USER}:{OPS_PASSWORD}"))
    s = fleet.settings
    put_stock(s, [("TEE-M", "us-east", "US", 100)])

    # When orders go through it: 20 plain ones, one over $500 (a person reviews it) and one
    # the schema refuses at the door (kept with its reason)
    ids = [f"obs-{i}" for i in range(20)]
    paid_at = utcnow().isoformat().replace("+00:00", "Z")
    payloads = [native_order(i, paid_at=paid_at) for i in ids]
    payloads.append(native_order("obs-big", paid_at=paid_at, quantity=40, price="25.00"))
    payloads.append(native_order("obs-bad", paid_at=paid_at, quantity=0))
    result = submit_orders(payloads, settings=s)
    assert (len(result.accepted), len(result.rejected)) == (21, 1)
    labelled = {st.value for st in LABELLED_OR_LATER}
    eventually(lambda: sum(n for st, n in state_counts(s).items() if st in labelled) == 20,
               180, "20 orders labelled")
    eventually(lambda: state_counts(s).get("on_hold") == 1, 60, "the $1,000 order on hold")

    # Then /metrics shows the workers, the orders and each stage's latency
    metrics_url = f"http://127.0.0.1:{s.metrics_port}/metrics"
    def both_workers_up() -> dict[str, dict[tuple, float]] | None:
        d = scrape(metrics_url)
        return d if d["orderfleet_workers_up"][()] == 2 else None

    m = eventually(both_workers_up, 30, "both workers answering the exporter's ping")
    assert m is not None
    assert sum(v for k, v in m["orderfleet_orders"].items()
               if dict(k)["state"] in labelled) == 20
    assert m["orderfleet_review_backlog"][(("reason", "fraud_review"),)] == 1
    assert m["orderfleet_exceptions_total"][(("stage", "fraud"), ("state", "on_hold"))] == 1
    assert m["orderfleet_intake_rejections_total"][(("door", "orders"),)] == 1
    assert {dict(k)["stage"] for k in m["orderfleet_stage_latency_seconds_count"]} >= {
        "fraud", "inventory", "labels"}
    # Paid just now and labelled within seconds: all within the promised dispatch.
    assert m["orderfleet_sla_attainment_ratio"][()] == 1.0
    assert set(dict(k)["queue_name"] for k in m["celery_queue_length"]) >= {"fraud", "labels"}
    scrape_text = httpx.get(metrics_url, timeout=30).text
    (ARTEFACTS / "metrics.txt").parent.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / "metrics.txt").write_text(scrape_text)

    # And Flower refuses anonymous users, and its API answers with the credentials
    flower = f"http://127.0.0.1:{flower_port}"
    assert httpx.get(f"{flower}/", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    auth = (OPS_USER, OPS_PASSWORD)
    workers = eventually(lambda: httpx.get(f"{flower}/api/workers", auth=auth,
                                           timeout=10).json(), 30, "Flower sees the workers")
    assert len(workers) == 2
    tasks = eventually(lambda: httpx.get(f"{flower}/api/tasks", auth=auth,
                                         params={"limit": 200}, timeout=10).json(),
                       30, "Flower lists tasks")
    # Task arguments carry ids only, never personal data.
    for task in tasks.values():
        text = json.dumps([task.get("args"), task.get("kwargs")])
        assert "@" not in text and "Main St" not in text and "Austin" not in text, text
    assert (s.var_dir / "flower-state").exists() or any(
        p.name.startswith("flower-state") for p in s.var_dir.iterdir())

    # And the order-health page refuses anonymous users and renders in headless Chromium
    page = f"http://127.0.0.1:{s.api_port}/ops/health"
    assert httpx.get(page, timeout=30).status_code == 401
    with_auth = f"http://{OPS_USER}:{OPS_PASSWORD}@127.0.0.1:{s.api_port}/ops/health"
    profile = tmp_path / "chromium-profile"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={profile}", "--window-size=1000,1500"]
    dom = subprocess.run([*common, "--dump-dom", with_auth], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for panel in ("backlog", "sla", "lag", "inventory", "payment", "logistics", "exceptions"):
        assert f'id="{panel}"' in dom
    assert dom.count("<svg") == 4
    shot = ARTEFACTS / "order-health.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*common, f"--screenshot={shot}", with_auth], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
