"""Label voids of cancelled orders: the carrier side of a cancellation.

``domain.cancellation.cancel_orders`` moves the order and marks a bought (or possibly being
bought) label ``void_pending`` in the caller's transaction; this stage then calls the carrier,
outside any transaction: a shipment without a recorded label is looked up by its idempotency
key (a purchase may have completed after the cancel), now and once more after the longest
purchase could still be running, and voided; the units that left the shelf with the label
come back. A beat sweep re-drives voids whose message was lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Task
from sqlalchemy import select, update

from config.settings import Settings, get_settings
from domain.alerts import raise_alert
from domain.carriers import CarrierRejected, CarrierUnavailable
from domain.carriers.shared import carrier_client
from domain.clock import utcnow
from domain.db import UnitOfWork, unit_of_work
from domain.models import OrderRow, Shipment, ShipmentStatus
from domain.pipeline import VOID_LABELS
from domain.reservations import restock_orders
from tasks.base import parse_ids, retry_countdown, retry_on_transient, stage_task

log = logging.getLogger(__name__)


@dataclass
class VoidOutcome:
    voided: list[int] = field(default_factory=list)  # order ids whose label is void now
    no_label: list[int] = field(default_factory=list)
    still_pending: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def void_cancelled_labels(order_ids: list[int], settings: Settings, client: Any, *,
                          final: bool) -> VoidOutcome:
    """Void the labels of cancelled orders at the carrier; restock what had left the shelf.

    A shipment without a recorded label is looked up by its idempotency key (a purchase may
    have completed after the cancel). ``final``: no purchase can still be running, so a label
    not found now was never bought.
    """
    with unit_of_work(settings) as uow:
        shipments = uow.session.execute(
            select(Shipment.order_id, Shipment.label_id, Shipment.idempotency_key,
                   Shipment.carrier)
            .where(Shipment.order_id.in_(order_ids), Shipment.status == ShipmentStatus.VOID_PENDING)
        ).all()
    out = VoidOutcome()
    found: dict[int, Any] = {}
    for order_id, label_id, key, carrier in shipments:  # HTTP outside any transaction
        try:
            if label_id is None:
                label = client.find_label(key, carrier=carrier)
                if label is None:
                    (out.no_label if final else out.still_pending).append(order_id)
                    continue
                found[order_id] = label
                label_id = label.label_id
            client.void_label(label_id, carrier=carrier)
            out.voided.append(order_id)
        except CarrierRejected as exc:
            out.failed[order_id] = exc.error
    with unit_of_work(settings) as uow:
        _record_voids(uow, out, found)
    return out


def _record_voids(uow: UnitOfWork, out: VoidOutcome, found: dict[int, Any]) -> None:
    session = uow.session
    guard = (Shipment.status == ShipmentStatus.VOID_PENDING,)
    if out.voided:
        session.execute(update(Shipment).where(Shipment.order_id.in_(out.voided), *guard)
                        .values(status=ShipmentStatus.VOIDED))
        for order_id, label in found.items():  # bought after the cancel: record it for audit
            session.execute(update(Shipment).where(Shipment.order_id == order_id)
                            .values(label_id=label.label_id,
                                    tracking_number=label.tracking_number))
        # Units of a labelled order had left stock when the label was bought; they are back.
        restock_orders(uow, out.voided, "label voided")
    if out.no_label:
        session.execute(update(Shipment).where(Shipment.order_id.in_(out.no_label), *guard)
                        .values(status=ShipmentStatus.NO_LABEL))
    for order_id, error in out.failed.items():
        session.execute(update(Shipment).where(Shipment.order_id == order_id, *guard)
                        .values(status=ShipmentStatus.VOID_FAILED))
        raise_alert(session, "label_void_failed", str(order_id),
                    f"cancelled order {order_id}: the carrier refused to void its label "
                    f"({error[:200]}); stop the parcel by hand", severity="critical")


def pending_voids(uow: UnitOfWork, settings: Settings, limit: int = 5000) -> list[int]:
    """Orders whose label void has waited past the stage deadline (its message was lost)."""
    cutoff = utcnow() - timedelta(seconds=settings.stage_deadline_s)
    return list(uow.session.execute(
        select(Shipment.order_id)
        .join(OrderRow, OrderRow.id == Shipment.order_id)
        .where(Shipment.status == ShipmentStatus.VOID_PENDING, OrderRow.updated_at < cutoff)
        .order_by(Shipment.order_id).limit(limit)
    ).scalars())


@stage_task(VOID_LABELS, max_retries=20)
def void_labels(task: Task, order_ids: list[int], final: bool = False) -> None:
    settings = get_settings()
    try:
        with retry_on_transient(task):
            out = void_cancelled_labels(parse_ids(order_ids), settings, carrier_client(settings),
                                        final=bool(final))
    except CarrierUnavailable as exc:
        raise task.retry(exc=exc, countdown=retry_countdown(task.request.retries)) from exc
    if out.still_pending:
        # A purchase for these keys may still be running (the label client retries for up to
        # carrier_retry_max_s): look once more when it must have finished.
        countdown = settings.carrier_retry_max_s + settings.carrier_timeout_s + 5
        void_labels.apply_async((out.still_pending, True), countdown=countdown)


@stage_task("orderfleet.cancellation.sweep")
def sweep(task: Task) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        ids = pending_voids(uow, settings)
        uow.enqueue_chunks(VOID_LABELS, ids, True)
    if ids:
        log.warning("re-drove %d pending label voids", len(ids))
