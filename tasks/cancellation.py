"""Cancellation: stop an order wherever it is in the pipeline, and never ship it.

Where the order is decides what cancelling means:

* before a label (received ... batched, label_failed): its reservation is released and it
  becomes ``cancelled``. A batched order may have a label purchase in flight: its shipment is
  marked ``void_pending`` and the void task looks the label up by its idempotency key, now and
  once more after the longest purchase could still be running, and voids what it finds.
* labelled (label bought, parcel not handed over): ``cancelled``; the void task voids the label
  at the carrier and puts the units, which left stock when the label was bought, back.
* in transit or delivered: too late to stop; it becomes ``return_requested`` and is restocked
  by :func:`receive_returns` when the parcel comes back.
* final states: nothing to do.

The state change and the reservation release share one transaction; the carrier is called
only after it committed, by ``orderfleet.cancellation.void_labels``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from config.settings import Settings, get_settings
from domain.alerts import raise_alert
from domain.clock import utcnow
from domain.db import UnitOfWork, unit_of_work
from domain.lifecycle import Move, State, apply_transitions
from domain.models import OrderRow, Shipment
from tasks.base import TRANSIENT_ERRORS, chunks, parse_ids, retry_backoff, stage_task

log = logging.getLogger(__name__)

BEFORE_LABEL = frozenset({State.RECEIVED, State.ON_HOLD, State.FRAUD_CHECKED,
                          State.BACKORDERED, State.RESERVED, State.BATCHED, State.LABEL_FAILED})
AFTER_HANDOVER = frozenset({State.IN_TRANSIT, State.DELIVERED})
FINAL = frozenset({State.CANCELLED, State.REJECTED, State.RETURNED, State.RETURN_REQUESTED})
# Shipment statuses the cancellation stage writes.
VOID_PENDING, VOIDED, VOID_FAILED, NO_LABEL = "void_pending", "voided", "void_failed", "cancelled"


@dataclass
class CancelOutcome:
    cancelled: list[int] = field(default_factory=list)
    returns: list[int] = field(default_factory=list)  # shipped already: a return is expected
    unchanged: dict[int, str] = field(default_factory=dict)  # order id -> its final state
    to_void: list[int] = field(default_factory=list)  # orders whose label must be voided


def cancel_orders(uow: UnitOfWork, order_ids: list[int], reason: str, *,
                  notify: bool = False) -> CancelOutcome:
    """Cancel orders wherever they are; enqueue label voids after the commit.

    ``notify`` tells the store (generic webhook) too: for a cancel that did not come from it.
    """
    session = uow.session
    outcome = CancelOutcome()
    ids = sorted(set(order_ids))
    if not ids:
        return outcome
    # A plain FOR UPDATE, not claim()'s SKIP LOCKED: a cancel must wait for a stage that holds
    # the order rather than be dropped.
    rows = session.execute(
        select(OrderRow.id, OrderRow.state).where(OrderRow.id.in_(ids))
        .order_by(OrderRow.id).with_for_update(of=OrderRow)
    ).all()
    detail = {"reason": reason[:500]}
    moves: list[Move] = []
    release: list[int] = []
    for order_id, raw_state in rows:
        state = State(raw_state)
        if state in BEFORE_LABEL:
            release.append(order_id)
            moves.append(Move(order_id, state, State.CANCELLED, detail))
        elif state == State.LABELLED:
            moves.append(Move(order_id, state, State.CANCELLED, detail))
        elif state in AFTER_HANDOVER:
            moves.append(Move(order_id, state, State.RETURN_REQUESTED, detail))
        else:
            outcome.unchanged[order_id] = state.value
    if release:
        from tasks.inventory import release_reservations

        release_reservations(uow, release, "cancelled")
    applied = apply_transitions(session, moves, stage="cancellation")
    outcome.cancelled = [m.order_id for m in applied if m.dst == State.CANCELLED]
    outcome.returns = [m.order_id for m in applied if m.dst == State.RETURN_REQUESTED]
    if outcome.cancelled:
        # A bought label (labelled) or possibly one being bought (batched): void it. A shipment
        # the carrier refused (label_failed) has no label.
        outcome.to_void = list(session.execute(
            update(Shipment)
            .where(Shipment.order_id.in_(outcome.cancelled),
                   Shipment.status.in_(("pending", "labelled")))
            .values(status=VOID_PENDING)
            .returning(Shipment.order_id)
        ).scalars())
        for part in chunks(sorted(outcome.to_void), 100):
            uow.after_commit(lambda part=part: void_labels.delay(part))
    if notify and (outcome.cancelled or outcome.returns):
        from tasks.pushback import notify_store

        notify_store(uow, outcome.cancelled + outcome.returns, "cancelled")
    log.info("cancelled %d orders, %d become returns, %d already final",
             len(outcome.cancelled), len(outcome.returns), len(outcome.unchanged))
    return outcome


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
    from domain.carriers import CarrierRejected

    with unit_of_work(settings) as uow:
        shipments = uow.session.execute(
            select(Shipment.order_id, Shipment.label_id, Shipment.idempotency_key,
                   Shipment.carrier)
            .where(Shipment.order_id.in_(order_ids), Shipment.status == VOID_PENDING)
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
    from tasks.inventory import restock_orders

    session = uow.session
    guard = (Shipment.status == VOID_PENDING,)
    if out.voided:
        session.execute(update(Shipment).where(Shipment.order_id.in_(out.voided), *guard)
                        .values(status=VOIDED))
        for order_id, label in found.items():  # bought after the cancel: record it for audit
            session.execute(update(Shipment).where(Shipment.order_id == order_id)
                            .values(label_id=label.label_id,
                                    tracking_number=label.tracking_number))
        # Units of a labelled order had left stock when the label was bought; they are back.
        restock_orders(uow, out.voided, "label voided")
    if out.no_label:
        session.execute(update(Shipment).where(Shipment.order_id.in_(out.no_label), *guard)
                        .values(status=NO_LABEL))
    for order_id, error in out.failed.items():
        session.execute(update(Shipment).where(Shipment.order_id == order_id, *guard)
                        .values(status=VOID_FAILED))
        raise_alert(session, "label_void_failed", str(order_id),
                    f"cancelled order {order_id}: the carrier refused to void its label "
                    f"({error[:200]}); stop the parcel by hand", severity="critical")


def receive_returns(uow: UnitOfWork, order_ids: list[int]) -> list[int]:
    """A returned parcel arrived at the warehouse: restock it and close the order."""
    from tasks.inventory import restock_orders

    session = uow.session
    rows = session.execute(
        select(OrderRow.id, OrderRow.state)
        .where(OrderRow.id.in_(sorted(set(order_ids))),
               OrderRow.state.in_([State.RETURN_REQUESTED.value, State.IN_TRANSIT.value,
                                   State.DELIVERED.value]))
        .order_by(OrderRow.id).with_for_update(of=OrderRow)
    ).all()
    moves = [Move(i, State(s), State.RETURNED, {"reason": "return received"}) for i, s in rows]
    applied = [m.order_id for m in apply_transitions(session, moves, stage="cancellation")]
    if applied:
        restock_orders(uow, applied, "returned")
        session.execute(update(Shipment).where(Shipment.order_id.in_(applied))
                        .values(status="returned"))
    return applied


def pending_voids(uow: UnitOfWork, settings: Settings, limit: int = 5000) -> list[int]:
    """Orders whose label void has waited past the stage deadline (its message was lost)."""
    cutoff = utcnow() - timedelta(seconds=settings.stage_deadline_s)
    return list(uow.session.execute(
        select(Shipment.order_id)
        .join(OrderRow, OrderRow.id == Shipment.order_id)
        .where(Shipment.status == VOID_PENDING, OrderRow.updated_at < cutoff)
        .order_by(Shipment.order_id).limit(limit)
    ).scalars())


@stage_task("orderfleet.cancellation.void_labels", max_retries=20)
def void_labels(self, order_ids: list[int], final: bool = False) -> None:  # type: ignore[no-untyped-def]
    from domain.carriers import CarrierUnavailable
    from tasks.labels import carrier_client

    settings = get_settings()
    ids = parse_ids(order_ids)
    try:
        out = void_cancelled_labels(ids, settings, carrier_client(settings), final=bool(final))
    except (CarrierUnavailable, *TRANSIENT_ERRORS) as exc:
        retry_backoff(self, exc)
        return
    if out.still_pending:
        # A purchase for these keys may still be running (the label client retries for up to
        # carrier_retry_max_s): look once more when it must have finished.
        countdown = settings.carrier_retry_max_s + settings.carrier_timeout_s + 5
        void_labels.apply_async((out.still_pending, True), countdown=countdown)


@stage_task("orderfleet.cancellation.sweep")
def sweep(self) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    with unit_of_work(settings) as uow:
        ids = pending_voids(uow, settings)
        for part in chunks(ids, 100):
            uow.after_commit(lambda part=part: void_labels.delay(part, True))
    if ids:
        log.warning("re-drove %d pending label voids", len(ids))
