"""The order lifecycle: explicit states and the one table of allowed transitions.

Stages change state only through ``apply_transitions``/``transition``, which refuse (and log)
any move the table does not allow, and guard the UPDATE on the state they read, so a task run
twice cannot apply the same move twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Row, bindparam, func, or_, select, text, update
from sqlalchemy.orm import Session, defer

from domain.clock import utcnow
from domain.db import any_of, insert_rows, unnest_rows
from domain.models import (
    ARRIVAL_EVENT,
    LABEL_EVENT,
    OrderEvent,
    OrderRow,
    Wave,
    order_events_table,
    orders_table,
)

log = logging.getLogger(__name__)


class State(StrEnum):
    RECEIVED = "received"
    ON_HOLD = "on_hold"  # waiting for a person: review desk, frozen SKU
    REJECTED = "rejected"  # fraud verdict
    FRAUD_CHECKED = "fraud_checked"
    BACKORDERED = "backordered"  # not enough stock; retried when stock arrives
    # No one warehouse has every line: the order became one part (a child order) per
    # warehouse, each reserved, waved and labelled on its own; the parent itself never ships.
    SPLIT = "split"
    RESERVED = "reserved"
    IN_WAVE = "in_wave"  # in a pick wave
    LABEL_FAILED = "label_failed"  # the carrier refused the parcel: a person must fix it
    LABELLED = "labelled"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    # Cancelled after hand-over: the parcel is coming back; restocked when it arrives.
    RETURN_REQUESTED = "return_requested"
    RETURNED = "returned"


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.RECEIVED: frozenset({S.FRAUD_CHECKED, S.ON_HOLD, S.REJECTED, S.CANCELLED}),
    # on_hold -> received: an order held at intake (before any fraud check) was approved.
    S.ON_HOLD: frozenset({S.RECEIVED, S.FRAUD_CHECKED, S.REJECTED, S.CANCELLED}),
    S.FRAUD_CHECKED: frozenset({S.RESERVED, S.BACKORDERED, S.SPLIT, S.ON_HOLD, S.CANCELLED}),
    S.BACKORDERED: frozenset({S.RESERVED, S.SPLIT, S.ON_HOLD, S.CANCELLED}),
    # reserved -> fraud_checked: the reservation expired; the order will be reserved again.
    S.RESERVED: frozenset({S.IN_WAVE, S.FRAUD_CHECKED, S.CANCELLED}),
    S.IN_WAVE: frozenset({S.LABELLED, S.LABEL_FAILED, S.CANCELLED}),
    S.LABEL_FAILED: frozenset({S.IN_WAVE, S.CANCELLED}),
    S.LABELLED: frozenset({S.IN_TRANSIT, S.DELIVERED, S.CANCELLED}),
    S.IN_TRANSIT: frozenset({S.DELIVERED, S.RETURNED, S.RETURN_REQUESTED}),
    S.DELIVERED: frozenset({S.RETURNED, S.RETURN_REQUESTED}),
    S.RETURN_REQUESTED: frozenset({S.RETURNED}),
    S.REJECTED: frozenset(),
    # Final for the parent: what happens next (a cancel included) happens to its parts.
    S.SPLIT: frozenset(),
    S.CANCELLED: frozenset(),
    S.RETURNED: frozenset(),
}

# The state sets every stage, sweep, report and benchmark shares: defined here only.
TERMINAL: frozenset[State] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
# Closed for the store: nothing of the order may change any more (a return only waits for
# its parcel).
FINAL: frozenset[State] = TERMINAL | {S.RETURN_REQUESTED}
# In flight: the pipeline moves these on its own within minutes (status-lag alerts watch them;
# labelled and in-transit orders move on carrier time, watched by the tracking-silence alert).
PROCESSING: frozenset[State] = frozenset({S.RECEIVED, S.FRAUD_CHECKED, S.RESERVED, S.IN_WAVE})


def not_held_in_a_wave(now: datetime) -> ColumnElement[bool]:
    """Orders not waiting, by design, in an open pick wave that is not due yet: with a daily
    wave target a wave holds its orders for hours (tasks.sharding), which is neither lag nor
    backlog. Once the wave is due and still open (its close sweep late) they count again."""
    held = select(Wave.id).where(Wave.status == "open", Wave.close_by > now)
    return or_(OrderRow.wave_id.is_(None), OrderRow.wave_id.not_in(held))
# States the pipeline moves on its own, carrier time included.
AUTOMATED: frozenset[State] = PROCESSING | {S.LABELLED, S.IN_TRANSIT}
# Nothing reserved or shipped yet: the store may still change the address.
EDITABLE: frozenset[State] = frozenset({S.RECEIVED, S.ON_HOLD, S.FRAUD_CHECKED, S.BACKORDERED})
# No label yet: a cancel releases the reservation (a purchase in flight is voided).
BEFORE_LABEL: frozenset[State] = EDITABLE | {S.RESERVED, S.IN_WAVE, S.LABEL_FAILED}
# Handed to the carrier: a cancel becomes a return.
AFTER_HANDOVER: frozenset[State] = frozenset({S.IN_TRANSIT, S.DELIVERED})
# A label was bought and the parcel left (or will leave) with it.
LABELLED_OR_LATER: frozenset[State] = frozenset({S.LABELLED, S.IN_TRANSIT, S.DELIVERED})
# Where an order comes to rest without a person, new stock or carrier time: a demo or a
# benchmark is over when every order is in one of these.
SETTLED: frozenset[State] = frozenset(
    {S.DELIVERED, S.ON_HOLD, S.REJECTED, S.BACKORDERED, S.CANCELLED, S.RETURNED,
     S.LABEL_FAILED, S.SPLIT})

# Past the label stage: labelled (the parcel moves on carrier time) or at rest. A run that
# measures paid -> labelled is over when every order is in one of these.
LABELLED_OR_SETTLED: frozenset[State] = LABELLED_OR_LATER | SETTLED


def arrivals_since(session: Session, since: datetime) -> int:
    """Orders that arrived at intake since ``since`` (a split order's parts are not
    arrivals). Through a partial index of the event log: cheap however long the day."""
    return int(session.scalar(select(func.count()).select_from(OrderEvent).where(
        text(ARRIVAL_EVENT), OrderEvent.at >= since)) or 0)


def labels_since(session: Session, since: datetime) -> int:
    """Labels bought since ``since`` (an order labelled again after a failure counts again)."""
    return int(session.scalar(select(func.count()).select_from(OrderEvent).where(
        text(LABEL_EVENT), OrderEvent.at >= since)) or 0)


def values(states: Iterable[State]) -> list[str]:
    """The column values of ``states`` (for ``OrderRow.state.in_(...)``), sorted."""
    return sorted(s.value for s in states)


def is_allowed(src: State | str, dst: State | str) -> bool:
    return State(dst) in TRANSITIONS[State(src)]


class IllegalTransition(Exception):
    def __init__(self, order_id: int, src: str, dst: str) -> None:
        self.order_id, self.src, self.dst = order_id, src, dst
        super().__init__(f"order {order_id}: transition {src} -> {dst} is not allowed")


@dataclass(frozen=True)
class Move:
    order_id: int
    src: State
    dst: State
    detail: dict[str, Any] = field(default_factory=dict)
    # Columns of the order written by the same UPDATE as the state: a second UPDATE of the row
    # writes a second version of it, and the state is indexed, so no update of an order is HOT:
    # every version costs a new entry in each of the table's indexes.
    columns: dict[str, Any] = field(default_factory=dict)


# SQLite: moves of one group whose column values are shared by this many orders on average or
# more go in one UPDATE per distinct set of values (sharding: a wave's orders); below that, one
# prepared UPDATE per order in an executemany (fraud: a score per order). PostgreSQL takes any
# mix in one UPDATE over arrays.
_SHARED_VALUES_MIN = 3


def apply_transitions(session: Session, moves: Sequence[Move], *, stage: str) -> list[Move]:
    """Apply moves in bulk: guarded UPDATEs per (src, dst) pair (each writing the moves'
    ``columns`` too) and one event INSERT.

    Returns the moves applied. An illegal move is refused and logged; a move whose order is no
    longer in ``src`` (another worker got there first) is skipped.
    """
    groups: dict[tuple[State, State], list[Move]] = defaultdict(list)
    for m in moves:
        if not is_allowed(m.src, m.dst):
            log.warning("refused illegal transition", extra={"order_id": m.order_id,
                        "src": str(m.src), "dst": str(m.dst), "stage": stage})
            continue
        groups[(m.src, m.dst)].append(m)
    now = utcnow()
    applied: list[Move] = []
    for (src, dst), group in groups.items():
        by_columns: dict[tuple[str, ...], list[Move]] = defaultdict(list)
        for m in group:
            by_columns[tuple(sorted(m.columns))].append(m)
        for names, moves_ in by_columns.items():
            done = (_move_with_columns(session, src, dst, names, moves_, now) if names
                    else _move(session, src, dst, [m.order_id for m in moves_], {}, now))
            by_id = {m.order_id: m for m in moves_}
            applied.extend(by_id[i] for i in done)
    if applied:
        events = [{"order_id": m.order_id, "at": now, "stage": stage, "from_state": m.src.value,
                   "to_state": m.dst.value, "detail": m.detail or None} for m in applied]
        insert_rows(session, order_events_table, events)
    return applied


def _move(session: Session, src: State, dst: State, ids: Sequence[int],
          columns: dict[str, Any], now: datetime) -> list[int]:
    """One guarded UPDATE of these orders from ``src`` to ``dst``; the ids it moved."""
    return list(session.execute(
        update(OrderRow)
        .where(any_of(session, OrderRow.id, ids), OrderRow.state == src.value)
        .values(state=dst.value, updated_at=now, **columns)
        .returning(OrderRow.id)
        # Callers read the state they claimed, never the row after the move: skip the
        # ORM's in-Python evaluation of the WHERE over every loaded order.
        .execution_options(synchronize_session=False)
    ).scalars().all())


def _move_with_columns(session: Session, src: State, dst: State, names: tuple[str, ...],
                       moves: list[Move], now: datetime) -> list[int]:
    """Move orders and write their ``columns`` in the same UPDATE; the ids moved."""
    try:
        shared: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for m in moves:
            shared[tuple(m.columns[n] for n in names)].append(m.order_id)
    except TypeError:  # unhashable values (a list of reasons): one set per order
        shared = {}
    # PostgreSQL moves any mix of values in one statement (unnest); elsewhere a statement per
    # set of values shared by a few orders beats a statement per order.
    arrays = session.get_bind().dialect.name == "postgresql"
    if shared and (len(shared) == 1
                   or (not arrays and len(shared) * _SHARED_VALUES_MIN <= len(moves))):
        return [i for values_, ids in shared.items()
                for i in _move(session, src, dst, ids, dict(zip(names, values_, strict=True)),
                               now)]
    ordered = sorted(moves, key=lambda m: m.order_id)
    if arrays:
        return _move_from_arrays(session, src, dst, names, ordered, now)
    stmt = (update(orders_table)
            .where(orders_table.c.id == bindparam("b_id"), orders_table.c.state == src.value)
            .values(state=dst.value, updated_at=now,
                    **{n: bindparam(f"b_{n}") for n in names}))
    result = session.connection().execute(stmt, [
        {"b_id": m.order_id, **{f"b_{n}": m.columns[n] for n in names}} for m in ordered])
    ids = [m.order_id for m in ordered]
    if result.rowcount == len(ids):
        return ids
    # Some were not in ``src`` any more (callers hold the rows locked, so this is rare): the
    # rows this statement moved are those in ``dst`` stamped with its time.
    return list(session.scalars(select(OrderRow.id).where(
        any_of(session, OrderRow.id, ids), OrderRow.state == dst.value,
        OrderRow.updated_at == now)))


def _move_from_arrays(session: Session, src: State, dst: State, names: tuple[str, ...],
                      ordered: list[Move], now: datetime) -> list[int]:
    """PostgreSQL: the moves as one ``UPDATE ... FROM unnest(arrays)``.

    An executemany of per-order UPDATEs (a fraud verdict's reasons differ per order) was the
    fraud stage's largest cost, in the worker and in PostgreSQL alike: one statement per order.
    """
    c = orders_table.c
    v = unnest_rows(orders_table, [{"id": m.order_id, **{n: m.columns[n] for n in names}}
                                   for m in ordered])
    return list(session.scalars(
        update(orders_table).where(c.id == v.c.id, c.state == src.value)
        .values(state=dst.value, updated_at=now, **{n: v.c[n] for n in names})
        .returning(c.id)))


def transition(
    session: Session, order_id: int, dst: State, *, stage: str, detail: dict[str, Any] | None = None
) -> State:
    """Move one order (ops commands): lock it, check the table, apply. Returns the old state."""
    current = session.execute(
        select(OrderRow.state).where(OrderRow.id == order_id).with_for_update()
    ).scalar_one()
    src = State(current)
    if not is_allowed(src, dst):
        log.warning("refused illegal transition", extra={"order_id": order_id, "src": src.value,
                    "dst": dst.value, "stage": stage})
        raise IllegalTransition(order_id, src.value, dst.value)
    apply_transitions(session, [Move(order_id, src, dst, detail or {})], stage=stage)
    return src


def claim(
    session: Session, order_ids: Iterable[int], states: Iterable[State], *,
    with_payload: bool = True,
) -> list[OrderRow]:
    """Lock the orders among ``order_ids`` that are in one of ``states``.

    SKIP LOCKED: an order another worker is already handling (a duplicate delivery) is left to
    it rather than waited for. SQLite has no row locks; its writers are serialised instead.
    FOR NO KEY UPDATE, not FOR UPDATE: a stage changes the order's state, never its key, so a
    transaction that only inserts a row referring to the order (a non-core job, a coupon, a
    notification: a foreign key takes FOR KEY SHARE) must not make the order look taken.
    """
    ids = sorted(set(order_ids))
    if not ids:
        return []
    return _locked(session, _claiming(session, select(OrderRow), ids, states), with_payload)


def _claiming(session: Session, stmt: Any, ids: list[int], states: Iterable[State]) -> Any:
    """``stmt`` narrowed to the orders among ``ids`` in ``states``, locked as :func:`claim`
    says, in id order."""
    return (stmt.where(any_of(session, OrderRow.id, ids),
                       any_of(session, OrderRow.state, [State(s).value for s in states]))
            .order_by(OrderRow.id)
            .with_for_update(skip_locked=True, key_share=True, of=OrderRow))


def claim_columns(session: Session, order_ids: Iterable[int], states: Iterable[State],
                  *columns: Any) -> list[Row[Any]]:
    """:func:`claim` returning only ``columns`` of the orders (the same locks): a stage that
    reads a few fields skips building whole ORM rows, the order JSON among them."""
    ids = sorted(set(order_ids))
    if not ids:
        return []
    return list(session.execute(_claiming(session, select(*columns), ids, states)).all())


def claim_ids(session: Session, order_ids: Iterable[int], states: Iterable[State]) -> list[int]:
    """:func:`claim` for a stage that needs only which orders it holds (loading whole rows to
    read their ids was a fifth of the label stage's recording)."""
    return [r[0] for r in claim_columns(session, order_ids, states, OrderRow.id)]


def _locked(session: Session, stmt: Any, with_payload: bool) -> list[OrderRow]:
    if not with_payload:
        # The order JSON is the widest column; stages that do not read it skip decoding it
        # (raiseload: reading it anyway is a bug, not a silent query per order).
        stmt = stmt.options(defer(OrderRow.payload, raiseload=True))
    return list(session.execute(stmt).scalars().all())


@dataclass(frozen=True)
class Sweep:
    """Room in a stage's batch for orders waiting in its state besides a message's own.

    Under a steady trickle of payments each message carries the few orders one intake call
    brought, and every batch pays a message, a transaction and its set-wise statements. A stage
    that claimed fewer than ``limit`` orders takes other orders waiting in its state (their own
    messages then find nothing to do), so batches grow with the backlog by themselves.
    ``fast_only``: a fast-lane message takes only fast-lane orders, never the standard backlog.
    """

    limit: int
    fast_only: bool = False


def sweep_up(session: Session, state: State, taken: Sequence[int], sweep: Sweep | None, *,
             with_payload: bool = True) -> list[OrderRow]:
    """Lock up to ``sweep.limit - len(taken)`` more orders in ``state`` (not ``taken``).

    Newest first: the oldest orders' messages are at the head of the queue and run next, so
    taking the newest keeps the two from meeting on the same rows; the newest's own messages
    come later and find them moved. SKIP LOCKED, so it never waits, and it locks only after
    the message's own orders (``claim``): no lock cycle between two batches. A batch that
    rolls back leaves these orders in ``state``: their own message finds them there, or, if it
    ran meanwhile, found them locked and sent them to the stage again
    (``domain.pipeline.contended``); the re-drive sweep covers a message lost on the way.
    """
    if sweep is None or sweep.limit <= len(taken):
        return []
    room = sweep.limit - len(taken)
    stmt = select(OrderRow).where(OrderRow.state == state.value)
    if taken:
        stmt = stmt.where(~any_of(session, OrderRow.id, sorted(taken)))
    if sweep.fast_only:
        stmt = stmt.where(OrderRow.fast_lane.is_(True))
    stmt = (stmt.order_by(OrderRow.updated_at.desc()).limit(room)
            .with_for_update(skip_locked=True, key_share=True, of=OrderRow))
    return _locked(session, stmt, with_payload)
