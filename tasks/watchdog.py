"""Ops alerts a beat sweep raises about orders and parcels that stopped moving.

* **tracking silent**: a shipment with no new tracking event for ``tracking_silent_alert_s``
  (24 h) is flagged for a manual check and raises a ``tracking_silent`` alert; the flag and
  the alert clear when news arrives (``tasks.tracking``) or the parcel is delivered.
* **status lag**: an order in an automated processing state whose status has not changed for
  ``status_lag_alert_s`` (15 min) raises a ``status_lag`` alert (with its hold reason, e.g. a
  carrier breaker that is open); the alert resolves once the order moves on.

Alerts are idempotent per (kind, key) while open (``domain.alerts``), so the sweep may run
every minute without repeating itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Task
from sqlalchemy import func, select, update

from config.settings import Settings, get_settings
from domain.alerts import open_alerts, raise_alert, resolve_alert
from domain.clock import utcnow
from domain.db import UnitOfWork, unit_of_work
from domain.lifecycle import PROCESSING, not_held_in_a_wave, values
from domain.models import OPEN_SHIPMENTS, OrderRow, Shipment
from tasks.base import retry_on_transient, stage_task

log = logging.getLogger(__name__)

# Bounds one sweep's work (and its alert writes) during a large outage; the rest follow on the
# next sweep.
MAX_ALERTS_PER_SWEEP = 500


@dataclass
class WatchdogOutcome:
    silent_flagged: list[int] = field(default_factory=list)  # shipment ids
    lagging: list[int] = field(default_factory=list)  # order ids newly alerted
    resolved: int = 0


def flag_silent_tracking(uow: UnitOfWork, settings: Settings,
                         now: datetime | None = None) -> list[int]:
    """Flag shipments whose tracking has been silent too long; return their ids."""
    session = uow.session
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.tracking_silent_alert_s)
    last_news = func.coalesce(Shipment.last_event_at, Shipment.label_bought_at)
    rows = session.execute(
        select(Shipment.id, Shipment.order_id, Shipment.carrier, Shipment.tracking_number,
               last_news.label("last_news"))
        .where(Shipment.status.in_(OPEN_SHIPMENTS), Shipment.flagged_at.is_(None),
               last_news < cutoff)
        .order_by(Shipment.id).limit(MAX_ALERTS_PER_SWEEP)
        .with_for_update(skip_locked=True, of=Shipment)
    ).all()
    for r in rows:
        hours = (now - r.last_news).total_seconds() / 3600
        session.execute(update(Shipment).where(Shipment.id == r.id).values(
            flagged_at=now, flag_reason=f"tracking silent since {r.last_news:%Y-%m-%d %H:%M}Z"))
        raise_alert(session, "tracking_silent", r.tracking_number or f"shipment-{r.id}",
                    f"order {r.order_id}: no tracking news from {r.carrier} for {hours:.0f} h; "
                    f"check the parcel by hand",
                    detail={"order_id": r.order_id, "shipment_id": r.id,
                            "last_event_at": r.last_news.isoformat()})
    return [r.id for r in rows]


def raise_status_lag(uow: UnitOfWork, settings: Settings,
                     now: datetime | None = None) -> list[int]:
    """Alert on orders in processing whose status has not changed for status_lag_alert_s;
    return the ids newly alerted."""
    session = uow.session
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.status_lag_alert_s)
    already = {a.key for a in open_alerts(session, "status_lag")}
    rows = session.execute(
        select(OrderRow.id, OrderRow.store, OrderRow.state, OrderRow.updated_at,
               OrderRow.hold_reason)
        .where(OrderRow.state.in_(values(PROCESSING)),
               OrderRow.updated_at < cutoff, not_held_in_a_wave(now))
        .order_by(OrderRow.updated_at, OrderRow.id).limit(MAX_ALERTS_PER_SWEEP + len(already))
    ).all()
    raised = []
    for r in rows:
        if str(r.id) in already:
            continue
        minutes = (now - r.updated_at).total_seconds() / 60
        why = f"; {r.hold_reason}" if r.hold_reason else ""
        if raise_alert(session, "status_lag", str(r.id),
                       f"order {r.id} ({r.store}) has been {r.state} for {minutes:.0f} min"
                       f"{why}"[:1000],
                       detail={"state": r.state, "since": r.updated_at.isoformat()}):
            raised.append(r.id)
        if len(raised) >= MAX_ALERTS_PER_SWEEP:
            break
    return raised


def resolve_cleared(uow: UnitOfWork, settings: Settings, now: datetime | None = None) -> int:
    """Close status-lag alerts of orders that moved on, and silence alerts of parcels that
    were delivered or stopped being tracked."""
    session = uow.session
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.status_lag_alert_s)
    resolved = 0
    lag = {int(a.key): a for a in open_alerts(session, "status_lag") if a.key.isdigit()}
    if lag:
        still = set(session.execute(
            select(OrderRow.id).where(OrderRow.id.in_(lag),
                                      OrderRow.state.in_(values(PROCESSING)),
                                      OrderRow.updated_at < cutoff,
                                      not_held_in_a_wave(now))).scalars())
        for order_id in lag.keys() - still:
            resolved += resolve_alert(session, "status_lag", str(order_id))
    silent = {a.key for a in open_alerts(session, "tracking_silent")}
    if silent:
        open_numbers = set(session.execute(
            select(Shipment.tracking_number).where(
                Shipment.tracking_number.in_(silent),
                Shipment.status.in_(OPEN_SHIPMENTS),
                Shipment.flagged_at.is_not(None))).scalars())
        for number in silent - open_numbers:
            resolved += resolve_alert(session, "tracking_silent", number)
    return resolved


def run_watchdog(settings: Settings, now: datetime | None = None) -> WatchdogOutcome:
    """One sweep: flag silent parcels, alert on lagging orders, resolve what cleared."""
    with unit_of_work(settings) as uow:
        out = WatchdogOutcome(silent_flagged=flag_silent_tracking(uow, settings, now),
                              lagging=raise_status_lag(uow, settings, now))
        out.resolved = resolve_cleared(uow, settings, now)
    if out.silent_flagged or out.lagging:
        log.warning("watchdog: %d parcels with silent tracking, %d orders lagging",
                    len(out.silent_flagged), len(out.lagging))
    return out


@stage_task("orderfleet.watchdog.sweep")
def sweep(task: Task) -> None:
    with retry_on_transient(task):
        run_watchdog(get_settings())
