"""End-to-end fixtures: a real fleet (worker processes, beat, sandbox carrier) per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from domain.db import unit_of_work
from domain.models import OrderRow
from workers.fleet import Fleet, free_port


@pytest.fixture
def start_fleet(db, broker, settings, tmp_path) -> Iterator[Callable[..., Fleet]]:
    """Start a fleet on the test database and broker; free ports, so tests can run anywhere.

    Keyword arguments override settings (e.g. wave_size) or Fleet options (workers=...).
    """
    started: list[Fleet] = []
    fleet_opts = {"workers", "concurrency", "beat", "carrier_time_scale", "queues", "flower",
                  "flower_port", "api", "exporter", "autoscale", "noncore_sinks"}

    def start(**overrides: Any) -> Fleet:
        opts = {k: overrides.pop(k) for k in list(overrides) if k in fleet_opts}
        fleet_settings = settings.model_copy(update={
            "carrier_url": f"http://127.0.0.1:{free_port()}",
            "smtp_port": free_port(),
            "marketing_url": f"http://127.0.0.1:{free_port()}",
            "wave_max_age_s": 1.0,
            "tracking_sweep_interval_s": 2.0,
            "sweep_interval_s": 5.0,
            "stage_deadline_s": 30.0,
            # The surge stages pause tracking sweeps; tests that want them lower the ratio.
            "surge_intake_ratio": 1000.0,
            "var_dir": tmp_path,
            **overrides,
        })
        fleet = Fleet(fleet_settings, log_dir=tmp_path / "logs",
                      **{"workers": 2, "carrier_time_scale": 36_000.0, **opts})
        started.append(fleet)
        return fleet.start()

    yield start
    for fleet in started:
        fleet.stop()


def state_counts(settings: Any) -> dict[str, int]:
    with unit_of_work(settings) as uow:
        return dict(uow.session.execute(
            select(OrderRow.state, func.count()).group_by(OrderRow.state)).all())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` the end-to-end tests run one after another on one
    worker while the others take the rest: two fleets of real processes at once on a 2-core
    machine would only slow each other down."""
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.xdist_group("e2e"))
