"""Ops work behind the ``orderfleet`` CLI: the health rules of ``orderfleet alerts``."""

from __future__ import annotations

from config.settings import Settings


def check_health_rules(settings: Settings, ping_workers: bool = True) -> tuple[int, int, int]:
    """Evaluate the alert rules against the database and the broker; raise what fires,
    resolve what cleared. Returns (firing, raised, resolved)."""
    from domain.clock import utcnow
    from domain.db import unit_of_work
    from domain.health_rules import apply_findings, evaluate

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
