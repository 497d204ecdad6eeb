"""Cancellation: stop an order wherever it is in the pipeline, and never ship it.

Where the order is decides what cancelling means:

* before a label (received ... in_wave, label_failed): its reservation is released and it
  becomes ``cancelled``. An order in a wave may have a label purchase in flight: its shipment
  is marked ``void_pending`` and the void task (``tasks.cancellation``) looks the label up by
  its idempotency key, now and once more after the longest purchase could still be running,
  and voids what it finds.
* labelled (label bought, parcel not handed over): ``cancelled``; the void task voids the label
  at the carrier and puts the units, which left stock when the label was bought, back.
* in transit or delivered: too late to stop; it becomes ``return_requested`` and is restocked
  (or written off) through the returns lane when the parcel comes back
  (``domain.returns.receive_order_return``, which opens its return then).
* split (no one warehouse had every line; domain.split): the parent never ships itself, so
  cancelling it cancels its parts, each by these same rules; the parent stays ``split`` and
  its event log records the cancellation.
* final states: nothing to do.

The state change and the reservation release share one transaction; the carrier is called
only after it committed. Used by the intake (a store's cancellation), the CLI and the desk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import insert, select, update

from domain.clock import utcnow
from domain.db import UnitOfWork
from domain.lifecycle import (
    AFTER_HANDOVER,
    BEFORE_LABEL,
    Move,
    State,
    apply_transitions,
)
from domain.models import OrderRow, Shipment, ShipmentStatus, order_events_table
from domain.notifications import notify_store
from domain.pipeline import VOID_LABELS
from domain.reservations import release_reservations
from domain.split import parts_of

log = logging.getLogger(__name__)


@dataclass
class CancelOutcome:
    cancelled: list[int] = field(default_factory=list)
    returns: list[int] = field(default_factory=list)  # shipped already: a return is expected
    unchanged: dict[int, str] = field(default_factory=dict)  # order id -> its final state
    split: list[int] = field(default_factory=list)  # split parents whose parts were cancelled
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

    def lock(order_ids: list[int]) -> list[tuple[int, str]]:
        # A plain FOR UPDATE, not claim()'s SKIP LOCKED: a cancel must wait for a stage that
        # holds the order rather than be dropped.
        return [(r.id, r.state) for r in session.execute(
            select(OrderRow.id, OrderRow.state).where(OrderRow.id.in_(order_ids))
            .order_by(OrderRow.id).with_for_update(of=OrderRow)).all()]

    rows = lock(ids)
    # A split parent is cancelled through its parts. Found after the lock: an order the
    # reservation stage was splitting while this waited for it is split now, with parts.
    parts = parts_of(session, [i for i, st in rows if st == State.SPLIT.value])
    of_parts = {p for ps in parts.values() for p in ps}
    if of_parts - set(ids):
        rows += lock(sorted(of_parts - set(ids)))
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
        elif state == State.SPLIT:
            outcome.split.append(order_id)
        else:
            outcome.unchanged[order_id] = state.value
    if release:
        release_reservations(uow, release, "cancelled")
    applied = apply_transitions(session, moves, stage="cancellation")
    if outcome.split:
        now = utcnow()
        session.execute(insert(order_events_table), [
            {"order_id": i, "at": now, "stage": "cancellation", "from_state": State.SPLIT.value,
             "to_state": State.SPLIT.value, "detail": {**detail, "parts": parts.get(i, [])}}
            for i in outcome.split])
    outcome.cancelled = [m.order_id for m in applied if m.dst == State.CANCELLED]
    outcome.returns = [m.order_id for m in applied if m.dst == State.RETURN_REQUESTED]
    if outcome.cancelled:
        # A bought label (labelled) or possibly one being bought (in_wave): void it. A shipment
        # the carrier refused (label_failed) has no label.
        outcome.to_void = list(session.execute(
            update(Shipment)
            .where(Shipment.order_id.in_(outcome.cancelled),
                   Shipment.status.in_((ShipmentStatus.PENDING, ShipmentStatus.LABELLED)))
            .values(status=ShipmentStatus.VOID_PENDING)
            .returning(Shipment.order_id)
        ).scalars())
        uow.enqueue_chunks(VOID_LABELS, sorted(outcome.to_void))
    if notify and (outcome.cancelled or outcome.returns or outcome.split):
        # The store knows the parent's order, not its parts: one notice for the parent.
        told = [i for i in outcome.cancelled + outcome.returns if i not in of_parts]
        notify_store(uow, told + outcome.split, "cancelled")
    log.info("cancelled %d orders, %d become returns, %d already final",
             len(outcome.cancelled), len(outcome.returns), len(outcome.unchanged))
    return outcome

