"""The pipeline's order, in one place: which task takes an order (or a wave) in each state.

A stage never imports another stage. When its transaction moves orders on, it names the state
they reached and :func:`advance` enqueues the task that takes orders in that state, after the
commit (``UnitOfWork.enqueue``). The re-drive sweep reads the same table to resend work that
sat too long, so what a stage does next and what the sweep resends cannot drift apart.

::

    paid -> received --FRAUD_CHECK--> fraud_checked --RESERVE--> reserved --ASSIGN_WAVES-->
    batched (in a wave) --BUY_LABELS(wave)--> labelled --tracking sweeps--> delivered

Task names are ``orderfleet.<stage module>.<verb>``; ``config/celery.py`` routes each to its
stage's queue (a test fails when a name here is not routed or not registered).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from domain.db import UnitOfWork, chunks, send_task
from domain.lifecycle import State
from domain.models import Wave

# --- the order pipeline --------------------------------------------------------------------
FRAUD_CHECK = "orderfleet.fraud.check"
RESERVE = "orderfleet.inventory.reserve"
ASSIGN_WAVES = "orderfleet.sharding.assign"
BUY_LABELS = "orderfleet.labels.buy"  # one message per pick wave, not per order
TRACKING_BACKFILL = "orderfleet.tracking.backfill"  # shipment ids, fanned out by a beat sweep

# --- work the stages hand each other besides the main line ----------------------------------
WAKE_BACKORDERED = "orderfleet.inventory.wake_backordered"  # SKUs whose units came back
SEND_NOTIFICATIONS = "orderfleet.pushback.send"  # store notification ids
VOID_LABELS = "orderfleet.cancellation.void_labels"  # order ids of cancelled orders

# The task that moves an order out of each automated state (orders in a wave move with it).
STAGE_FOR_STATE: dict[State, str] = {
    State.RECEIVED: FRAUD_CHECK,
    State.FRAUD_CHECKED: RESERVE,
    State.RESERVED: ASSIGN_WAVES,
}

PIPELINE_TASKS: tuple[str, ...] = (FRAUD_CHECK, RESERVE, ASSIGN_WAVES, BUY_LABELS,
                                   TRACKING_BACKFILL, WAKE_BACKORDERED, SEND_NOTIFICATIONS,
                                   VOID_LABELS)


def advance(uow: UnitOfWork, state: State, order_ids: Sequence[int]) -> None:
    """Orders now in ``state`` go to the stage that takes them, once the transaction commits."""
    if order_ids:
        uow.enqueue_chunks(STAGE_FOR_STATE[state], sorted(order_ids))


def advance_committed(state: State, order_ids: Sequence[int], batch_size: int) -> int:
    """Like :func:`advance`, for orders whose transaction already committed; returns messages.

    A message lost here is re-sent by the re-drive sweep: the orders are in ``state``.
    """
    sent = 0
    for part in chunks(sorted(order_ids), batch_size):
        send_task(STAGE_FOR_STATE[state], part)
        sent += 1
    return sent


# Lanes whose waves have a label queue of their own: a flood of made-to-order parcels (slow,
# hand-checked) never delays standard ones, and the reverse. Other lanes share "labels"; which
# of those is served first under a backlog is surge control's business.
LANE_LABEL_QUEUES: dict[str, str] = {"custom": "labels_custom"}
LABELS_QUEUE = "labels"


def label_queue(lane: str | None) -> str:
    """The queue a wave of ``lane`` buys its labels on."""
    return LANE_LABEL_QUEUES.get(lane or "", LABELS_QUEUE)


def label_waves(uow: UnitOfWork, wave_ids: Sequence[int]) -> None:
    """Closed pick waves go to their lane's label queue (one message per wave) after the
    commit."""
    if not wave_ids:
        return
    lanes = dict(uow.session.execute(
        select(Wave.id, Wave.lane).where(Wave.id.in_(list(wave_ids)))).all())
    for wave_id in wave_ids:
        uow.enqueue(BUY_LABELS, wave_id, queue=label_queue(lanes.get(wave_id)))
