"""Ops commands of the ``orderfleet`` CLI: the metrics exporter and the health rules."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default=None, help="Default: ORDERFLEET_METRICS_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: ORDERFLEET_METRICS_PORT (9808).")
def exporter(host: str | None, port: int | None) -> None:
    """Serve the fleet's Prometheus metrics (/metrics), read from PostgreSQL and Redis.

    Run one per fleet, whatever the number of workers; Prometheus scrapes it.
    """
    from workers.cli import _settings
    from workers.metrics import run_exporter

    settings = _settings()
    run_exporter(settings, host or settings.metrics_host, port or settings.metrics_port)


def check_health_rules(ping_workers: bool = True) -> tuple[int, int, int]:
    """Evaluate the alert rules against the database and the broker; raise what fires,
    resolve what cleared. Returns (firing, raised, resolved)."""
    from domain.clock import utcnow
    from domain.db import unit_of_work
    from domain.health_rules import apply_findings, evaluate
    from workers.cli import _settings

    settings = _settings()
    workers_up: int | None = None
    if ping_workers:
        from workers.app import app

        try:
            workers_up = len(app.control.ping(timeout=1.0) or [])
        except Exception:  # broker down: no worker reachable either
            workers_up = 0
    with unit_of_work(settings) as uow:
        findings = evaluate(uow.session, settings, utcnow(), workers_up)
        raised, resolved = apply_findings(uow.session, findings)
    return len(findings), raised, resolved
