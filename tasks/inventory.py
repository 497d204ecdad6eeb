"""Inventory reservation: all lines of an order from one warehouse, or none; never oversell.

Mechanism, and why: a micro-batch of orders locks the stock rows of every SKU it needs with
``SELECT ... FOR UPDATE`` in one global order (byte order of sku, warehouse: ``stock_lock_order``,
used everywhere stock is locked), allocates in memory, then writes every reservation, stock
increment and state change in the same transaction.

* Row locks, not a bare guarded ``UPDATE ... WHERE on_hand - reserved >= qty``: an order of
  several lines must see all of its SKUs at once to take all or nothing, and choosing the
  warehouse needs the levels of all of them. A guarded UPDATE per line would need savepoints
  to undo the lines already taken; the lock makes the decision and the write one atomic step.
* Not SKIP LOCKED on stock: a hot SKU's row is the contended resource itself; skipping it would
  backorder orders while stock exists. Batches *wait* on it instead, and one batch of 100
  orders costs a handful of statements, so the lock is held for milliseconds.
* Not an append-only ledger (Magento MSI): a ledger makes the salable quantity a SUM over
  reservations that every check must compute, and still needs a lock to stop two checks from
  passing at once. Here ``stock.reserved`` is that sum, kept in step in the same transaction,
  and the table's CHECK (``on_hand >= reserved``) makes an oversell a failed transaction.

Sorted locking means concurrent workers never deadlock. A worker killed mid-task loses its
transaction whole (PostgreSQL rolls back), the message is redelivered (late ack), and the
redelivered task does the work once: a reservation is unique per live order line. On SQLite
``BEGIN IMMEDIATE`` serialises writers and FOR UPDATE is a no-op; the logic is the same.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Task
from sqlalchemy import and_, bindparam, select, text, update

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import (
    UnitOfWork,
    any_of,
    array_value,
    chunks,
    insert_ignoring_conflicts,
    insert_rows,
    unit_of_work,
)
from domain.lifecycle import Move, State, Sweep, apply_transitions, claim, sweep_up
from domain.models import OrderLine, OrderRow, Reservation, SkuHold, Stock, Warehouse
from domain.models import ReservationStatus as R
from domain.pipeline import (
    CONTENDED_RETRY_S,
    RESERVE,
    WAKE_BACKORDERED,
    advance,
    held_elsewhere,
)
from domain.reservations import release_reservations
from domain.routing import WarehousePlan, plan_warehouses
from domain.sku_health import FAILED as ATTEMPT_FAILED
from domain.sku_health import RESERVED as ATTEMPT_RESERVED
from domain.sku_health import freeze_reason as auto_freeze_reason
from domain.sku_health import hold_reason, load_health, over_the_line, record_attempts
from domain.split import split_orders
from domain.stock import stock_lock_order
from tasks.base import batch_sweep, parse_ids, retry_on_transient, stage_task

log = logging.getLogger(__name__)

# Backordered orders examined per wake-up; the beat sweep picks up the rest next time.
MAX_WAKE_SCAN = 20_000


@dataclass
class ReserveOutcome:
    reserved: list[int] = field(default_factory=list)
    backordered: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # a SKU of theirs is frozen
    # Look at these again shortly: asked for and still fraud_checked but locked by another
    # transaction, or held for a SKU that was unfrozen while this batch ran.
    contended: list[int] = field(default_factory=list)
    frozen_skus: list[str] = field(default_factory=list)  # frozen by this batch
    # Split across warehouses: parent id -> its part ids (reserved in this transaction too).
    split: dict[int, list[int]] = field(default_factory=dict)


def choose_warehouse(
    lines: list[tuple[str, int]],
    available: dict[tuple[str, str], int],
    warehouses: dict[str, str],
    ship_country: str,
) -> str | None:
    """The nearest warehouse (domestic, then regional, then any) that can ship every line."""
    return plan_warehouses(lines, available, warehouses, ship_country).warehouse


def short_skus(lines: list[tuple[str, int]], available: dict[tuple[str, str], int],
               warehouses: Iterable[str]) -> list[str]:
    """SKUs of an order that no single warehouse has enough of."""
    need: dict[str, int] = defaultdict(int)
    for sku, qty in lines:
        need[sku] += qty
    codes = list(warehouses)
    return sorted(sku for sku, qty in need.items()
                  if max((available.get((sku, w), 0) for w in codes), default=0) < qty)


def lock_stock_of_skus(uow: UnitOfWork, skus: list[str]) -> dict[tuple[str, str], int]:
    """Lock every stock row of these SKUs (all warehouses); return units available per row."""
    if not skus:
        return {}
    rows = uow.session.execute(
        select(Stock.sku, Stock.warehouse, Stock.on_hand, Stock.reserved)
        .where(any_of(uow.session, Stock.sku, sorted(skus)))
        .order_by(*stock_lock_order(uow.session))
        .with_for_update()
    ).all()
    return {(r.sku, r.warehouse): r.on_hand - r.reserved for r in rows}


# One statement for a whole batch on PostgreSQL (arrays unnested into rows), instead of one
# UPDATE per stock row: a batch of 100 orders touches up to a few hundred rows.
_ADD_RESERVED_PG = text("""
    UPDATE stock AS s SET reserved = s.reserved + v.qty, updated_at = :now
    FROM unnest(CAST(:skus AS varchar[]), CAST(:whs AS varchar[]), CAST(:qtys AS integer[]))
         AS v(sku, wh, qty)
    WHERE s.sku = v.sku AND s.warehouse = v.wh AND s.on_hand - s.reserved >= v.qty
""")


def _add_reserved(uow: UnitOfWork, increments: dict[tuple[str, str], int]) -> int:
    """Guarded increment of ``reserved``; returns the rows changed. A row whose free units
    fell short is not changed, so the caller can refuse the batch instead of overselling."""
    session, now = uow.session, utcnow()
    items = sorted(increments.items())
    if session.get_bind().dialect.name == "postgresql":
        return int(session.connection().execute(_ADD_RESERVED_PG, {
            "now": now, "skus": array_value([s for (s, _), _ in items], "VARCHAR"),
            "whs": array_value([w for (_, w), _ in items], "VARCHAR"),
            "qtys": array_value([q for _, q in items], "INTEGER")}).rowcount)
    stmt = (
        update(Stock)
        .where(and_(Stock.sku == bindparam("b_sku"), Stock.warehouse == bindparam("b_wh"),
                    Stock.on_hand - Stock.reserved >= bindparam("b_qty")))
        .values(reserved=Stock.reserved + bindparam("b_qty"), updated_at=now)
    )
    return int(session.connection().execute(
        stmt, [{"b_sku": s, "b_wh": w, "b_qty": q} for (s, w), q in items]).rowcount)


def reserve_orders(uow: UnitOfWork, order_ids: list[int], settings: Settings,
                   sweep: Sweep | None = None) -> ReserveOutcome:
    """Reserve, backorder or hold each order among ``order_ids`` (fraud_checked/backordered;
    with ``sweep``, other fraud-checked orders waiting too).

    Orders are served oldest first. Each is reserved whole from one warehouse (domestic
    preferred), backordered when no warehouse can ship all its lines, or held when one of its
    SKUs is frozen. First attempts feed each SKU's failure window, which may freeze it.
    """
    session = uow.session
    outcome = ReserveOutcome()
    orders = claim(session, order_ids, [State.FRAUD_CHECKED, State.BACKORDERED],
                   with_payload=False)
    outcome.contended = held_elsewhere(session, State.FRAUD_CHECKED, order_ids,
                                       [o.id for o in orders])
    extra = sweep_up(session, State.FRAUD_CHECKED, [o.id for o in orders], sweep,
                     with_payload=False)
    if extra:
        orders = sorted(orders + extra, key=lambda o: o.id)
    if not orders:
        return outcome
    lines_by_order: dict[int, list[Any]] = defaultdict(list)
    for line in session.execute(
        select(OrderLine.id, OrderLine.order_id, OrderLine.sku, OrderLine.quantity)
        .where(any_of(session, OrderLine.order_id, [o.id for o in orders]))
        .order_by(OrderLine.order_id, OrderLine.line_no)
    ):
        lines_by_order[line.order_id].append(line)
    skus = sorted({line.sku for lines in lines_by_order.values() for line in lines})
    available = lock_stock_of_skus(uow, skus)
    warehouses = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    # Read after the stock locks: every batch touching these SKUs committed its window first.
    health = load_health(session, skus)
    frozen = {sku: h.reason or "frozen" for sku, h in health.items() if h.frozen}
    windows = {sku: h.recent for sku, h in health.items()}

    now = utcnow()
    expires = now + timedelta(seconds=settings.reservation_ttl_s)
    increments: dict[tuple[str, str], int] = defaultdict(int)
    attempts: dict[str, list[str]] = defaultdict(list)
    decided: dict[str, str] = {}  # SKUs frozen by this batch, with the reason
    reservations, moves = [], []
    to_split: dict[int, tuple[State, WarehousePlan]] = {}
    to_hold: list[tuple[int, State, list[str]]] = []
    for order in orders:  # oldest id first: first paid, first served
        lines = lines_by_order[order.id]
        wanted = [(ln.sku, ln.quantity) for ln in lines]
        state = State(order.state)
        stopped = sorted({sku for sku, _ in wanted if sku in frozen})
        if stopped:
            to_hold.append((order.id, state, stopped))
            continue
        plan = plan_warehouses(wanted, available, warehouses, order.ship_country)
        wh = plan.warehouse
        short: list[str] = []
        if wh is None and plan.is_split and settings.split_shipments and order.parent_id is None:
            # No one warehouse has every line, each SKU is whole in one: one part per
            # warehouse. Their units are set aside from this batch's view, so a later order
            # of the batch cannot take them before the parts are reserved below.
            for part_wh, part in plan.parts.items():
                for sku, qty in part.items():
                    available[(sku, part_wh)] -= qty
            to_split[order.id] = (state, plan)
        elif wh is None:
            short = short_skus(wanted, available, warehouses)
            outcome.backordered.append(order.id)
            if state != State.BACKORDERED:
                # Say whether a split across warehouses could ship it now (splitting is off,
                # or this order is a part already).
                detail: dict[str, Any] = {"short_skus": short}
                if plan.is_split:
                    detail["plan"] = plan.reason
                moves.append(Move(order.id, state, State.BACKORDERED, detail))
        else:
            for ln in lines:
                available[(ln.sku, wh)] -= ln.quantity
                increments[(ln.sku, wh)] += ln.quantity
                reservations.append({"order_line_id": ln.id, "order_id": order.id,
                                     "sku": ln.sku, "warehouse": wh, "quantity": ln.quantity,
                                     "status": R.ACTIVE, "created_at": now,
                                     "expires_at": expires})
            # The warehouse is written by the UPDATE that moves the order (one row version).
            moves.append(Move(order.id, state, State.RESERVED, {"warehouse": wh},
                              {"warehouse": wh}))
            outcome.reserved.append(order.id)
        if state == State.FRAUD_CHECKED:
            # A first attempt: it counts for each SKU that failed (short) or was reserved. The
            # SKUs of an order backordered only because no one warehouse had all of them count
            # neither way: each of them was in stock.
            for sku in sorted({s for s, _ in wanted}):
                if sku in short:
                    mark = ATTEMPT_FAILED
                elif wh is not None:
                    mark = ATTEMPT_RESERVED
                else:
                    continue
                attempts[sku].append(mark)
                windows[sku] = (windows.get(sku, "") + mark)[-settings.sku_freeze_window:]
                if (mark == ATTEMPT_FAILED and settings.sku_auto_freeze and sku not in frozen
                        and over_the_line(windows[sku], settings)):
                    # Later orders of this batch are held already.
                    frozen[sku] = decided[sku] = auto_freeze_reason(windows[sku], settings)

    if increments:
        if _add_reserved(uow, increments) != len(increments):
            raise RuntimeError("stock changed under a held lock; refusing to reserve")
        insert_rows(session, Reservation, reservations)
    # Health rows last (after every stock lock), the same order in every transaction. Locked,
    # they also tell whether a SKU was unfrozen by hand since this batch read it.
    health_now = record_attempts(
        session, {sku: "".join(marks) for sku, marks in attempts.items()}, settings, decided,
        also_lock={s for _, _, stopped in to_hold for s in stopped})
    outcome.frozen_skus = health_now.froze
    holds: list[dict[str, Any]] = []
    for order_id, state, stopped in to_hold:
        still = [s for s in stopped if s in health_now.frozen]
        if not still:  # unfrozen meanwhile: not held, and looked at again shortly
            outcome.contended.append(order_id)
            continue
        reason = hold_reason(still)
        holds.extend({"order_id": order_id, "sku": s, "held_at": now} for s in still)
        moves.append(Move(order_id, state, State.ON_HOLD,
                          {"frozen_skus": still, "hold_reason": reason}, {"hold_reason": reason}))
        outcome.held.append(order_id)
    if holds:
        # An order held again (approved by a person while the SKU stayed frozen) keeps its row.
        insert_ignoring_conflicts(session, SkuHold, holds, ["order_id", "sku"])
    if to_split:
        parts = split_orders(uow, {i: plan for i, (_, plan) in to_split.items()})
        for order_id, (state, plan) in to_split.items():
            moves.append(Move(order_id, state, State.SPLIT,
                              {"plan": plan.reason, "parts": parts.get(order_id, [])}))
        outcome.split = parts
    apply_transitions(session, moves, stage="inventory")
    log.info("inventory batch: %d reserved, %d backordered, %d held, %d split",
             len(outcome.reserved), len(outcome.backordered), len(outcome.held),
             len(outcome.split))
    part_ids = sorted(i for ids in outcome.split.values() for i in ids)
    if part_ids:
        # The parts now, in this transaction: each finds its one warehouse (the units were
        # set aside above, and the stock rows are still locked by this transaction).
        more = reserve_orders(uow, part_ids, settings)
        outcome.reserved += more.reserved
        outcome.backordered += more.backordered
        outcome.held += more.held
        outcome.contended += more.contended
        outcome.frozen_skus += more.frozen_skus
    return outcome


def expire_stale_reservations(uow: UnitOfWork, settings: Settings, limit: int = 1000) -> list[int]:
    """Release reservations of orders that sat in ``reserved`` past the TTL; return order ids.

    Only ``reserved`` orders expire: once an order is in a pick wave its units are being
    picked. The orders go back to fraud_checked (the re-drive sweep reserves them afresh),
    and the freed units go first to backordered orders that were waiting for them.
    """
    session = uow.session
    now = utcnow()
    stale = session.execute(
        select(Reservation.order_id).distinct()
        .join(OrderRow, OrderRow.id == Reservation.order_id)
        .where(Reservation.status == R.ACTIVE, Reservation.expires_at < now,
               OrderRow.state == State.RESERVED.value)
        .limit(limit)
    ).scalars().all()
    orders = claim(session, stale, [State.RESERVED], with_payload=False)
    ids = [o.id for o in orders]
    if ids:
        why = (f"reservation expired: the order stayed in reserved for over "
               f"{settings.reservation_ttl_s}s")
        units = release_reservations(uow, ids, "expired")
        apply_transitions(session, [Move(i, State.RESERVED, State.FRAUD_CHECKED,
                                         {"reason": why}) for i in ids], stage="inventory")
        log.warning("%s; released %d units of %d orders (first ids %s)", why, units, len(ids),
                    ids[:10])
    return ids


def servable_backorders(uow: UnitOfWork, skus: list[str] | None = None,
                        limit: int = MAX_WAKE_SCAN, *, split: bool = False) -> list[int]:
    """Backordered orders (with a line of ``skus``, or any) that today's free stock can serve:
    from one warehouse, or (``split``: splitting is on) split across several.

    A dry run of the allocation, oldest first and without locks: the reservation stage
    decides for real. Orders with a frozen SKU are left alone (unfreezing wakes them).
    """
    session = uow.session
    free = select(Stock.sku).where(Stock.on_hand > Stock.reserved)
    if skus:
        free = free.where(Stock.sku.in_(sorted(set(skus))))
    candidates = list(session.execute(
        select(OrderRow.id, OrderRow.ship_country, OrderRow.parent_id)
        .where(OrderRow.state == State.BACKORDERED.value,
               OrderRow.id.in_(select(OrderLine.order_id).where(OrderLine.sku.in_(free))))
        .order_by(OrderRow.id).limit(limit)
    ).all())
    if not candidates:
        return []
    lines: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for part in chunks([c.id for c in candidates], 5000):
        for order_id, sku, qty in session.execute(
            select(OrderLine.order_id, OrderLine.sku, OrderLine.quantity)
            .where(OrderLine.order_id.in_(part))
        ):
            lines[order_id].append((sku, qty))
    all_skus = sorted({s for ls in lines.values() for s, _ in ls})
    available = {(r.sku, r.warehouse): r.on_hand - r.reserved for r in session.execute(
        select(Stock.sku, Stock.warehouse, Stock.on_hand, Stock.reserved)
        .where(Stock.sku.in_(all_skus)))}
    frozen = {s for s, h in load_health(session, all_skus).items() if h.frozen}
    warehouses = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    out = []
    for order_id, country, parent_id in candidates:
        wanted = lines[order_id]
        if any(s in frozen for s, _ in wanted):
            continue
        plan = plan_warehouses(wanted, available, warehouses, country)
        if plan.warehouse is not None:
            for sku, qty in wanted:
                available[(sku, plan.warehouse)] -= qty
            out.append(order_id)
        elif split and plan.is_split and parent_id is None:
            for wh, units in plan.parts.items():
                for sku, qty in units.items():
                    available[(sku, wh)] -= qty
            out.append(order_id)
    return out


def wake_backordered(settings: Settings, skus: list[str] | None = None) -> int:
    """Re-enqueue backordered orders (for these SKUs) that the stock on hand can now serve."""
    with unit_of_work(settings) as uow:
        ids = servable_backorders(uow, skus, split=settings.split_shipments)
        advance(uow, State.FRAUD_CHECKED, ids)  # the reservation stage takes them
    if ids:
        log.info("woke %d backordered orders", len(ids))
    return len(ids)


@stage_task(RESERVE)
def reserve(task: Task, order_ids: list[int]) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        outcome = reserve_orders(uow, parse_ids(order_ids), settings,
                                 batch_sweep(task, settings))
        advance(uow, State.RESERVED, outcome.reserved)
    if outcome.contended:
        # Whoever holds them may roll back (its worker died): look again shortly. Bounded by
        # max_retries; the re-drive sweep covers anything beyond.
        raise task.retry(args=[outcome.contended], countdown=CONTENDED_RETRY_S)


@stage_task("orderfleet.inventory.expire_reservations")
def expire_reservations(task: Task) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        expire_stale_reservations(uow, settings)


@stage_task(WAKE_BACKORDERED)
def wake(task: Task, skus: list[str] | None = None) -> None:
    if skus is not None and not (isinstance(skus, list)
                                 and all(isinstance(s, str) for s in skus)):
        raise ValueError(f"skus must be a list of strings, got {skus!r}")
    with retry_on_transient(task):
        wake_backordered(get_settings(), skus)
