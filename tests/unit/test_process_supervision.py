"""The production process definitions: every long-running process is restarted when it dies,
stops with a warm shutdown (SIGTERM), and gets longer to stop than the longest task runs."""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("worker", "beat", "api", "flower")


def longest_task_s() -> int:
    """Celery kills a task at task_time_limit_s: no task runs longer."""
    return Settings().task_time_limit_s


def seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value.strip())
    assert match and any(match.groups()), f"not a duration: {value}"
    minutes, secs = (int(g or 0) for g in match.groups())
    return minutes * 60 + secs


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.mark.parametrize("name", SERVICES)
def test_compose_restarts_each_process_and_stops_it_warm(compose, name) -> None:
    service = compose["services"][name]
    assert service["restart"] in ("always", "unless-stopped")
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert seconds(service["stop_grace_period"]) > longest_task_s()


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((ROOT / "deploy" / "systemd" / name).read_text())
    return parser


@pytest.mark.parametrize("name", ["orderfleet-worker@.service", "orderfleet-beat.service",
                                  "orderfleet-api.service", "orderfleet-flower.service"])
def test_systemd_restarts_each_process_and_stops_it_warm(name) -> None:
    service = unit(name)["Service"]
    assert service["Restart"] == "always"
    assert service["KillSignal"] == "SIGTERM"
    # mixed: SIGTERM to the main process only (a worker's pool children finish their task),
    # SIGKILL to what is left after the timeout
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > longest_task_s()
    assert service["ExecStart"].split()[1] in ("worker", "beat", "serve", "flower")
    assert "StartLimitBurst" in unit(name)["Unit"]


def test_the_target_starts_every_process() -> None:
    wants = unit("orderfleet.target")["Unit"]["Wants"].split()
    assert {"orderfleet-beat.service", "orderfleet-api.service",
            "orderfleet-flower.service"} <= set(wants)
    assert any(w.startswith("orderfleet-worker@") for w in wants)
