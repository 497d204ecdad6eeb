"""The pipeline's order, in one place: which task takes an order (or a wave) in each state.

A stage never imports another stage. When its transaction moves orders on, it names the state
they reached and :func:`advance` enqueues the task that takes orders in that state, after the
commit (``UnitOfWork.enqueue``). The re-drive sweep reads the same table to resend work that
sat too long, so what a stage does next and what the sweep resends cannot drift apart.

::

    paid -> received --FRAUD_CHECK--> fraud_checked --RESERVE--> reserved --ASSIGN_WAVES-->
    batched (in a wave) --BUY_LABELS(waves)--> labelled --tracking sweeps--> delivered

Task names are ``orderfleet.<stage module>.<verb>``; ``config/celery.py`` routes each to its
stage's queue (a test fails when a name here is not routed or not registered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

import redis
from sqlalchemy import exists, func, select, text
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.db import UnitOfWork, any_of, chunks, send_task, unit_of_work
from domain.lifecycle import LABELLED_OR_LATER, State, Sweep, claim, sweep_up, values
from domain.models import CLOSED_WAVE, NoncoreJob, OrderRow, Wave

# --- the order pipeline --------------------------------------------------------------------
FRAUD_CHECK = "orderfleet.fraud.check"
RESERVE = "orderfleet.inventory.reserve"
ASSIGN_WAVES = "orderfleet.sharding.assign"
BUY_LABELS = "orderfleet.labels.buy"  # pick waves (ids), several per message
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


# --- fast lanes (domain.fastlane): the same tasks on each core stage's <queue>_fast ----------
# Kept in step with config.celery.FAST_LANE_QUEUES (tests/unit/test_surge.py checks it).
FAST_LANE_QUEUE: dict[str, str] = {
    FRAUD_CHECK: "fraud_fast",
    RESERVE: "inventory_fast",
    ASSIGN_WAVES: "sharding_fast",
    BUY_LABELS: "labels_fast",
}

# --- non-core jobs: never in the way of the pipeline (own queues, parked under load) ------------
POST_PURCHASE_EMAIL = "orderfleet.noncore.post_purchase_email"
REVIEW_REQUEST_EMAIL = "orderfleet.noncore.review_request_email"
ISSUE_COUPON = "orderfleet.noncore.coupon"
COMPENSATION_COUPON = "orderfleet.noncore.compensation_coupon"
MARKETING_SYNC = "orderfleet.noncore.marketing_sync"
NONCORE_TASKS: dict[str, str] = {
    "post_purchase_email": POST_PURCHASE_EMAIL,
    "review_request_email": REVIEW_REQUEST_EMAIL,
    "coupon": ISSUE_COUPON,
    "marketing_sync": MARKETING_SYNC,
    "delay_compensation": COMPENSATION_COUPON,
}
# Which non-core jobs follow an order reaching a state.
NONCORE_AFTER: dict[State, tuple[str, ...]] = {
    State.LABELLED: ("post_purchase_email", "coupon", "marketing_sync"),
    State.DELIVERED: ("review_request_email",),
}
# The states an order is in once it has reached a NONCORE_AFTER state.
_REACHED: dict[State, frozenset[State]] = {State.LABELLED: LABELLED_OR_LATER,
                                           State.DELIVERED: frozenset({State.DELIVERED})}


def fast_lane_ids(session: Session, order_ids: Sequence[int]) -> set[int]:
    """The fast-lane orders among ``order_ids``."""
    if not order_ids:
        return set()
    return set(session.scalars(select(OrderRow.id).where(
        any_of(session, OrderRow.id, order_ids), OrderRow.fast_lane.is_(True))))


def _split(task: str, order_ids: Sequence[int], fast: set[int]
           ) -> list[tuple[list[int], str | None]]:
    ids = sorted(order_ids)
    lanes = [([i for i in ids if i in fast], FAST_LANE_QUEUE.get(task)),
             ([i for i in ids if i not in fast], None)]
    return [(part, queue) for part, queue in lanes if part]


def advance(uow: UnitOfWork, state: State, order_ids: Sequence[int],
            countdown: float | None = None) -> None:
    """Orders now in ``state`` go to the stage that takes them, once the transaction commits;
    fast-lane orders in messages of their own, on the stage's fast-lane queue."""
    if order_ids:
        task = STAGE_FOR_STATE[state]
        for part, queue in _split(task, order_ids, fast_lane_ids(uow.session, order_ids)):
            uow.enqueue_chunks(task, part, queue=queue, countdown=countdown)


# Orders another transaction held locked when a stage ran are looked at again after this long.
CONTENDED_RETRY_S = 2.0


def held_elsewhere(session: Session, state: State, order_ids: Sequence[int],
                   taken: Sequence[int]) -> list[int]:
    """The orders of a message that are still in ``state`` but were not ``taken``: locked by
    another transaction (a duplicate delivery, another batch that swept them up, one whose
    worker died and is rolling back). They must not be dropped."""
    rest = sorted(set(order_ids) - set(taken))
    if not rest:
        return []
    return list(session.scalars(select(OrderRow.id).where(
        any_of(session, OrderRow.id, rest), OrderRow.state == state.value)))


def contended(uow: UnitOfWork, state: State, order_ids: Sequence[int],
              taken: Sequence[int]) -> list[int]:
    """Send the orders :func:`held_elsewhere` to the stage again after ``CONTENDED_RETRY_S``
    (after the commit); a run that finds them moved does nothing."""
    ids = held_elsewhere(uow.session, state, order_ids, taken)
    advance(uow, state, ids, countdown=CONTENDED_RETRY_S)
    return ids


def take(uow: UnitOfWork, state: State, order_ids: Sequence[int], sweep: Sweep | None, *,
         with_payload: bool = True) -> list[OrderRow]:
    """A stage's batch: the message's orders still in ``state`` (locked), contended ones sent
    again, and room left filled with other orders waiting in ``state`` (``Sweep``); by id."""
    rows = claim(uow.session, order_ids, [state], with_payload=with_payload)
    taken = [o.id for o in rows]
    contended(uow, state, order_ids, taken)
    more = sweep_up(uow.session, state, taken, sweep, with_payload=with_payload)
    return sorted(rows + more, key=lambda o: o.id) if more else rows


def advance_committed(state: State, order_ids: Sequence[int], batch_size: int) -> int:
    """Like :func:`advance`, for orders whose transaction already committed; returns messages.

    A message lost here is re-sent by the re-drive sweep: the orders are in ``state``.
    """
    task = STAGE_FOR_STATE[state]
    with unit_of_work() as uow:
        fast = fast_lane_ids(uow.session, order_ids)
    sent = 0
    for ids, queue in _split(task, order_ids, fast):
        for part in chunks(ids, batch_size):
            send_task(task, part, queue=queue)
            sent += 1
    return sent


# Lanes whose waves have a label queue of their own, polled after every forward stage: a flood
# of made-to-order parcels (slow, hand-checked) never delays standard ones. Only a flood goes
# there (``flooded_lanes``): a steady share of them on that queue waited for moments when every
# forward queue was empty, seconds at half load. Other lanes share "labels"; which of those is
# served first under a backlog is surge control's business.
LANE_LABEL_QUEUES: dict[str, str] = {"custom": "labels_custom"}


def flooded_lanes(session: Session, lanes: set[str], cap: int) -> set[str]:
    """The ``lanes`` with more than ``cap`` orders in closed waves (waiting for labels, these
    included): their label messages go on the lane's own queue."""
    if not lanes:
        return set()
    return {lane for lane, orders in session.execute(
        select(Wave.lane, func.sum(Wave.size)).where(text(CLOSED_WAVE),
                                                     any_of(session, Wave.lane, sorted(lanes)))
        .group_by(Wave.lane)) if (orders or 0) > cap}


def label_waves(uow: UnitOfWork, wave_ids: Sequence[int]) -> None:
    """Closed pick waves go to the label stage after the commit: a lane with a label queue of
    its own (custom-made) goes there, else a wave carrying a fast-lane order goes on the label
    stage's fast lane. The waves of one queue share messages, up to ``label_batch_orders``
    orders each (a wave is never split): one label run buys for all of them together."""
    if not wave_ids:
        return
    waves = uow.session.execute(
        select(Wave.id, Wave.lane, Wave.size)
        .where(any_of(uow.session, Wave.id, sorted(set(wave_ids))))
        .order_by(Wave.id)).all()
    fast_waves = set(uow.session.scalars(select(OrderRow.wave_id).where(
        any_of(uow.session, OrderRow.wave_id, wave_ids), OrderRow.fast_lane.is_(True))
        .distinct()))
    cap = uow.settings.label_batch_orders
    flooded = flooded_lanes(uow.session, {lane for _, lane, _ in waves
                                          if lane in LANE_LABEL_QUEUES}, cap)
    by_queue: dict[str | None, list[tuple[int, int]]] = {}
    for wave_id, lane, size in waves:
        own = LANE_LABEL_QUEUES[lane] if lane in flooded else None
        queue = own or (FAST_LANE_QUEUE[BUY_LABELS] if wave_id in fast_waves else None)
        by_queue.setdefault(queue, []).append((wave_id, size))
    for queue, sized in by_queue.items():
        message: list[int] = []
        orders = 0
        for wave_id, size in sized:
            if message and orders + size > cap:
                uow.enqueue(BUY_LABELS, message, queue=queue)
                message, orders = [], 0
            message.append(wave_id)
            orders += size
        uow.enqueue(BUY_LABELS, message, queue=queue)


def noncore_after(uow: UnitOfWork, state: State, order_ids: Sequence[int]) -> None:
    """The non-core jobs that follow orders reaching ``state`` (after the commit). Each runs on
    its own queue; under load the breaker parks them (tasks.noncore)."""
    if not order_ids or not uow.settings.noncore_jobs:
        return
    ids = store_orders(uow.session, order_ids)
    for kind in NONCORE_AFTER.get(state, ()):
        send_noncore(uow, kind, ids)


def send_noncore(uow: UnitOfWork, kind: str, order_ids: Sequence[int]) -> None:
    """The ``kind`` job of these orders, after the commit, in messages of
    ``noncore_batch_size`` (short, so a worker that took one is soon back for core work)."""
    uow.enqueue_chunks(NONCORE_TASKS[kind], order_ids, size=uow.settings.noncore_batch_size)


def store_orders(session: Session, order_ids: Sequence[int]) -> list[int]:
    """The orders the store knows among ``order_ids``: a part of a split order stands for its
    parent, so the customer gets one e-mail, one coupon, however many parcels."""
    return sorted(set(session.scalars(
        select(func.coalesce(OrderRow.parent_id, OrderRow.id))
        .where(any_of(session, OrderRow.id, sorted(set(order_ids)))))))


# What the re-drive sweep re-sent, per state ("waves": closed waves without a label message),
# counted in the shared Redis since it was last emptied: a lost message shows as a count here
# (``orderfleet_redriven_total``, the benchmarks' figures), not only as an order that was late.
REDRIVEN_KEY = "orderfleet:redrive:counts"


def count_redriven(r: redis.Redis, sent: Mapping[str, int]) -> None:
    """Add what one sweep re-sent to :data:`REDRIVEN_KEY` (one round trip)."""
    sent = {what: n for what, n in sent.items() if n}
    if not sent:
        return
    with r.pipeline(transaction=False) as pipe:
        for what, n in sent.items():
            pipe.hincrby(REDRIVEN_KEY, what, n)
        pipe.execute()


def redriven(r: redis.Redis) -> dict[str, int]:
    """Everything the re-drive sweep has re-sent, per state (and ``waves``)."""
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v)
            for k, v in r.hgetall(REDRIVEN_KEY).items()}


def redrive_noncore(uow: UnitOfWork, within_s: float, limit: int = 50_000) -> dict[str, int]:
    """Send again the non-core jobs of orders that reached their state in the last
    ``within_s`` and have no job row yet: after a broker lost its messages, and the parked
    jobs it kept, these would never run. A job is once per (order, kind), so re-sending one
    that was merely waiting costs a message, not a second e-mail."""
    if not uow.settings.noncore_jobs:
        return {}
    since = utcnow() - timedelta(seconds=within_s)
    sent: dict[str, int] = {}
    for state, kinds in NONCORE_AFTER.items():
        for kind in kinds:
            # A part's job is its parent's (store_orders).
            store_order = func.coalesce(OrderRow.parent_id, OrderRow.id)
            done = exists().where(NoncoreJob.order_id == store_order, NoncoreJob.kind == kind)
            ids = sorted(set(uow.session.scalars(
                select(store_order).where(OrderRow.state.in_(values(_REACHED[state])),
                                          OrderRow.updated_at >= since, ~done)
                .order_by(OrderRow.id).limit(limit))))
            if ids:
                send_noncore(uow, kind, ids)
                sent[kind] = len(ids)
    return sent
