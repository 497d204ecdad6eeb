"""Label request: one label per shipment, bought from the carrier in one batch call per wave.

Exactly once, even when a call times out after the carrier charged: each shipment gets an
idempotency key (stored, unique) before any call; the carrier returns the same label for the
same key, so a retried or redelivered task never buys a second one. The HTTP call happens
between two short transactions, never while rows are locked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from sqlalchemy import func, select, update

from config.settings import Settings, get_settings
from domain.carrier import CarrierClient, CarrierRejected, CarrierUnavailable, Label, LabelRequest
from domain.clock import utcnow
from domain.db import UnitOfWork, insert_ignoring_conflicts, unit_of_work
from domain.lifecycle import Move, State, apply_transitions, claim
from domain.models import Batch, OrderRow, Shipment, Warehouse
from tasks.base import TRANSIENT_ERRORS, parse_ids, retry_backoff, stage_task
from tasks.inventory import consume_reservations
from tasks.sharding import carrier_for

log = logging.getLogger(__name__)

_clients: dict[tuple[int, str], CarrierClient] = {}


def carrier_client(settings: Settings) -> CarrierClient:
    """One HTTP client per process (connection reuse), rebuilt in a forked child."""
    key = (os.getpid(), settings.carrier_url)
    if key not in _clients:
        _clients[key] = CarrierClient(settings.carrier_url, timeout_s=settings.carrier_timeout_s,
                                      retry_max_s=settings.carrier_retry_max_s)
    return _clients[key]


def idempotency_key(order_id: int) -> str:
    return f"orderfleet-shipment-{order_id}"


@dataclass
class LabelOutcome:
    labelled: list[int]
    failed: dict[int, str]


def prepare_shipments(uow: UnitOfWork, batch_id: int) -> list[LabelRequest]:
    """Create (once) a shipment per batched order of the wave; return the requests to send."""
    session = uow.session
    orders = [o for o in claim(session, _orders_of(uow, batch_id), [State.BATCHED])]
    if not orders:
        return []
    countries = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    rows = []
    for o in orders:
        assert o.warehouse is not None
        carrier, service = carrier_for(countries[o.warehouse], o.ship_country)
        rows.append({"order_id": o.id, "batch_id": batch_id, "carrier": carrier,
                     "service": service, "idempotency_key": idempotency_key(o.id),
                     "status": "pending"})
    insert_ignoring_conflicts(session, Shipment, rows, ["order_id"])
    pending = session.execute(
        select(Shipment, OrderRow)
        .join(OrderRow, OrderRow.id == Shipment.order_id)
        .where(Shipment.order_id.in_([o.id for o in orders]), Shipment.label_id.is_(None))
        .order_by(Shipment.id)
    ).all()
    return [
        LabelRequest(
            idempotency_key=s.idempotency_key, carrier=s.carrier, service=s.service,
            from_country=countries[o.warehouse], to_country=o.ship_country,
            to_postal_code=o.payload["shipping_address"].get("postal_code", ""),
            weight_g=max(o.weight_g, 1), reference=f"{o.store}/{o.source_order_id}",
        )
        for s, o in pending
    ]


def _orders_of(uow: UnitOfWork, batch_id: int) -> list[int]:
    return list(uow.session.execute(
        select(OrderRow.id).where(OrderRow.batch_id == batch_id)).scalars())


def record_labels(uow: UnitOfWork, labels: list[Label]) -> list[int]:
    """Store bought labels, ship the stock, move the orders to labelled; return order ids."""
    session = uow.session
    if not labels:
        return []
    by_key = {lb.idempotency_key: lb for lb in labels}
    shipments = session.execute(
        select(Shipment.id, Shipment.order_id, Shipment.idempotency_key)
        .where(Shipment.idempotency_key.in_(by_key))
    ).all()
    order_ids = [s.order_id for s in shipments]
    still_batched = {o.id for o in claim(session, order_ids, [State.BATCHED])}
    now = utcnow()
    updates, moves = [], []
    for s in shipments:
        if s.order_id not in still_batched:
            continue  # cancelled meanwhile, or recorded by an earlier run
        lb = by_key[s.idempotency_key]
        updates.append({"id": s.id, "label_id": lb.label_id, "tracking_number": lb.tracking_number,
                        "rate": lb.rate, "rate_currency": lb.currency, "status": "labelled",
                        "label_bought_at": lb.created_at})
        moves.append(Move(s.order_id, State.BATCHED, State.LABELLED,
                          {"tracking_number": lb.tracking_number, "carrier": lb.carrier,
                           "replayed": lb.replayed}))
    if updates:
        session.execute(update(Shipment), updates)
        consume_reservations(uow, [m.order_id for m in moves])
    applied = apply_transitions(session, moves, stage="labels")
    log.debug("recorded %d labels at %s", len(applied), now)
    return [m.order_id for m in applied]


def fail_labels(uow: UnitOfWork, failed: dict[int, str]) -> list[int]:
    """Orders whose parcel the carrier refused (a 4xx: bad address, too heavy) wait for a
    person in label_failed, with the carrier's words, instead of being retried forever."""
    session = uow.session
    orders = claim(session, failed, [State.BATCHED])
    if not orders:
        return []
    session.execute(update(OrderRow), [
        {"id": o.id, "hold_reason": f"carrier refused the label: {failed[o.id]}"[:1000]}
        for o in orders])
    applied = apply_transitions(session, [
        Move(o.id, State.BATCHED, State.LABEL_FAILED, {"carrier_error": failed[o.id][:500]})
        for o in orders], stage="labels")
    return [m.order_id for m in applied]


def finish_wave(uow: UnitOfWork, batch_id: int) -> None:
    """Mark the wave labelled once none of its orders waits for a label."""
    session = uow.session
    waiting = session.execute(
        select(func.count()).select_from(OrderRow)
        .where(OrderRow.batch_id == batch_id, OrderRow.state == State.BATCHED.value)
    ).scalar_one()
    if waiting == 0:
        session.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "closed")
                        .values(status="labelled"))


def buy_wave_labels(batch_id: int, settings: Settings, client: CarrierClient) -> LabelOutcome:
    """The whole stage for one wave: prepare, buy (one batch call), record."""
    with unit_of_work(settings) as uow:
        requests = prepare_shipments(uow, batch_id)
    failed: dict[int, str] = {}
    labels: list[Label] = []
    if requests:
        result = client.buy_labels(requests)  # retried inside (tenacity); raises when down
        labels = result.labels
        for key, error in result.errors.items():
            failed[int(key.rsplit("-", 1)[1])] = error
        if failed:
            log.warning("carrier refused %d labels in wave %s", len(failed), batch_id)
    with unit_of_work(settings) as uow:
        labelled = record_labels(uow, labels)
        fail_labels(uow, failed)
        finish_wave(uow, batch_id)
    return LabelOutcome(labelled, failed)


@stage_task("orderfleet.labels.buy", max_retries=20)
def buy(self, batch_id: int) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    (wave,) = parse_ids([batch_id])
    try:
        buy_wave_labels(wave, settings, carrier_client(settings))
    except CarrierUnavailable as exc:
        # The carrier is down past the retry budget: try the wave again later; the orders stay
        # batched (visible) and the re-drive sweep resends it should this message be lost.
        retry_backoff(self, exc)
    except CarrierRejected:
        log.exception("carrier rejected the label batch of wave %s", wave)
    except TRANSIENT_ERRORS as exc:
        retry_backoff(self, exc)
