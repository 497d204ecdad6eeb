"""Tracking backfill: a beat-scheduled sweep asks the carrier about undelivered shipments.

The sweep only selects shipments and fans them out in batches; each backfill task fetches the
trackers in one call, records new events (unique per shipment and carrier event id, so a
re-run adds nothing) and moves orders to in_transit or delivered.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from domain.carrier import CarrierClient, CarrierUnavailable, Tracker
from sqlalchemy import or_, select, update

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, insert_ignoring_conflicts, unit_of_work
from domain.lifecycle import Move, State, apply_transitions, claim
from domain.models import Shipment, TrackingEvent
from tasks.base import TRANSIENT_ERRORS, chunks, parse_ids, retry_backoff, stage_task
from tasks.labels import carrier_client

log = logging.getLogger(__name__)

OPEN_SHIPMENT_STATUSES = ("labelled", "in_transit")
IN_TRANSIT_STATUSES = frozenset({"in_transit", "out_for_delivery", "failed_attempt"})


def due_shipments(uow: UnitOfWork, settings: Settings, limit: int = 20_000) -> list[int]:
    """Undelivered shipments not checked within the last half sweep interval."""
    cutoff = utcnow() - timedelta(seconds=settings.tracking_sweep_interval_s / 2)
    return list(uow.session.execute(
        select(Shipment.id)
        .where(Shipment.status.in_(OPEN_SHIPMENT_STATUSES),
               or_(Shipment.last_checked_at.is_(None), Shipment.last_checked_at < cutoff))
        .order_by(Shipment.id).limit(limit)
    ).scalars())


def record_trackers(uow: UnitOfWork, shipment_ids: list[int], trackers: list[Tracker]) -> int:
    """Write new tracking events and advance orders; return the number of new events."""
    session = uow.session
    now = utcnow()
    shipments = {
        s.tracking_number: s for s in session.execute(
            select(Shipment).where(Shipment.id.in_(shipment_ids),
                                   Shipment.status.in_(OPEN_SHIPMENT_STATUSES))
            .with_for_update(skip_locked=True)
        ).scalars()
    }
    events, moves_by_order = [], {}
    for tr in trackers:
        s = shipments.get(tr.tracking_number)
        if s is None:
            continue
        s.last_checked_at = now
        for ev in tr.events:
            events.append({"shipment_id": s.id, "carrier_event_id": ev.id, "status": ev.status,
                           "at": ev.at, "location": ev.location, "message": ev.message,
                           "recorded_at": now})
        if tr.events:
            s.last_event_at = max(ev.at for ev in tr.events)
        if tr.status == "delivered":
            s.status, s.delivered_at = "delivered", s.last_event_at
            moves_by_order[s.order_id] = State.DELIVERED
        elif tr.status in IN_TRANSIT_STATUSES:
            s.status = "in_transit"
            moves_by_order[s.order_id] = State.IN_TRANSIT
        s.tracking_status = tr.status if tr.status != "unknown" else s.tracking_status
    inserted = insert_ignoring_conflicts(
        session, TrackingEvent, events, ["shipment_id", "carrier_event_id"],
        returning=[TrackingEvent.id])
    orders = {o.id: State(o.state) for o in claim(
        session, moves_by_order, [State.LABELLED, State.IN_TRANSIT])}
    moves = [Move(oid, src, moves_by_order[oid]) for oid, src in orders.items()
             if src != moves_by_order[oid]]
    apply_transitions(session, moves, stage="tracking")
    session.flush()
    return len(inserted)


def backfill_shipments(shipment_ids: list[int], settings: Settings, client: CarrierClient) -> int:
    with unit_of_work(settings) as uow:
        numbers = list(uow.session.execute(
            select(Shipment.tracking_number)
            .where(Shipment.id.in_(shipment_ids), Shipment.tracking_number.is_not(None))
        ).scalars())
    if not numbers:
        return 0
    trackers = client.track(numbers)
    with unit_of_work(settings) as uow:
        return record_trackers(uow, shipment_ids, trackers)


@stage_task("orderfleet.tracking.sweep")
def sweep(self) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    with unit_of_work(settings) as uow:
        ids = due_shipments(uow, settings)
        # Stamp them now so an overlapping sweep does not fan the same shipments out twice.
        if ids:
            uow.session.execute(update(Shipment).where(Shipment.id.in_(ids))
                                .values(last_checked_at=utcnow()))
        for part in chunks(ids, settings.tracking_batch_size):
            uow.after_commit(lambda part=part: backfill.delay(part))
    if ids:
        log.info("tracking sweep: %d shipments in %d batches", len(ids),
                 -(-len(ids) // settings.tracking_batch_size))


@stage_task("orderfleet.tracking.backfill")
def backfill(self, shipment_ids: list[int]) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    ids = parse_ids(shipment_ids)
    try:
        backfill_shipments(ids, settings, carrier_client(settings))
    except CarrierUnavailable as exc:
        retry_backoff(self, exc)
    except TRANSIENT_ERRORS as exc:
        retry_backoff(self, exc)
