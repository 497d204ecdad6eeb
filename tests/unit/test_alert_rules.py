"""The Prometheus alert rules: valid, unit-tested by promtool, and the same rules (names,
thresholds, runbooks) that ``orderfleet alerts`` evaluates from the database."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from config.settings import Settings
from domain.health_rules import RUNBOOKS

OPS = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
RULES = OPS / "rules" / "orderfleet.rules.yml"
RULE_TESTS = OPS / "tests" / "orderfleet.test.yml"
# Watches the exporter itself: only Prometheus can see it missing.
PROMETHEUS_ONLY = {"OrderfleetExporterDown"}


def alert_rules() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool missing: run `make tools` (Debian package prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_every_alert_has_a_severity_and_a_runbook_line():
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["runbook"].strip(), name


def test_the_cli_evaluates_the_same_rules_with_the_same_runbooks():
    rules = alert_rules()
    assert set(rules) - PROMETHEUS_ONLY == set(RUNBOOKS)
    for name, runbook in RUNBOOKS.items():
        assert runbook == rules[name]["annotations"]["runbook"], name


def test_thresholds_are_the_settings_defaults():
    defaults = Settings.model_fields
    rules = alert_rules()

    def threshold(name: str) -> float:
        found = re.search(r"[<>]=?\s*([0-9.]+)\s*$", rules[name]["expr"].strip())
        assert found is not None, name
        return float(found.group(1))

    assert threshold("OrderfleetSlaAttainmentLow") == defaults["sla_attainment_alert"].default
    assert threshold("OrderfleetStatusLag") == defaults["status_lag_alert_s"].default
    assert threshold("OrderfleetReservationFailureRate") == \
        defaults["sku_freeze_failure_rate"].default
    assert threshold("OrderfleetCostShareHigh") == defaults["cost_share_alert"].default
    assert threshold("OrderfleetBacklogOld") == defaults["backlog_age_alert_s"].default
    assert rules["OrderfleetSlaAttainmentLow"]["for"] == "3d"
    assert f"> {defaults['exception_rise_alert'].default} *" in \
        rules["OrderfleetExceptionRateUp"]["expr"]


def test_every_alert_has_promtool_unit_tests_that_fire_it_and_keep_it_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in tests:
        for case in group["alert_rule_test"]:
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fired == set(alert_rules())
    assert quiet == set(alert_rules())


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in check.stdout
    unit = subprocess.run([tool, "test", "rules", str(RULE_TESTS)], capture_output=True,
                          text=True, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_promtool_accepts_the_compose_prometheus_config():
    tool = promtool()
    out = subprocess.run([tool, "check", "config", "--syntax-only",
                          str(OPS / "prometheus.yml")], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
