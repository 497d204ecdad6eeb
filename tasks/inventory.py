"""Inventory reservation: all lines of an order from one warehouse, or none; never oversell.

Mechanism: a micro-batch of orders locks the stock rows it needs with ``SELECT ... FOR UPDATE``
in one sorted order (sku, warehouse), allocates in memory, then writes every reservation and
stock increment in the same transaction. Sorted locking means concurrent workers never
deadlock; the guarded increment and the table's CHECK (on_hand >= reserved) mean a bug could
at worst fail a transaction, never oversell. A reservation is unique per order line (while not
released), so a redelivered task cannot reserve twice. One round trip per batch, not per
order, is what makes this stage fast.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, bindparam, insert, select, tuple_, update

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, unit_of_work
from domain.lifecycle import Move, State, apply_transitions, claim
from domain.models import OrderLine, OrderRow, Reservation, Stock, Warehouse
from tasks.base import TRANSIENT_ERRORS, chunks, parse_ids, retry_backoff, stage_task

log = logging.getLogger(__name__)


@dataclass
class ReserveOutcome:
    reserved: list[int] = field(default_factory=list)
    backordered: list[int] = field(default_factory=list)


def choose_warehouse(
    lines: list[tuple[str, int]],
    available: dict[tuple[str, str], int],
    warehouses: dict[str, str],
    ship_country: str,
) -> str | None:
    """The warehouse that can ship every line, preferring one in the destination country."""
    need: dict[str, int] = defaultdict(int)
    for sku, qty in lines:
        need[sku] += qty
    candidates = [
        code for code in sorted(warehouses)
        if all(available.get((sku, code), 0) >= qty for sku, qty in need.items())
    ]
    if not candidates:
        return None
    domestic = [c for c in candidates if warehouses[c] == ship_country]
    return (domestic or candidates)[0]


def reserve_orders(uow: UnitOfWork, order_ids: list[int], settings: Settings) -> ReserveOutcome:
    session = uow.session
    orders = claim(session, order_ids, [State.FRAUD_CHECKED, State.BACKORDERED])
    outcome = ReserveOutcome()
    if not orders:
        return outcome
    lines_by_order: dict[int, list[OrderLine]] = defaultdict(list)
    for line in session.execute(
        select(OrderLine).where(OrderLine.order_id.in_([o.id for o in orders]))
        .order_by(OrderLine.order_id, OrderLine.line_no)
    ).scalars():
        lines_by_order[line.order_id].append(line)
    skus = sorted({line.sku for lines in lines_by_order.values() for line in lines})
    warehouses = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    stock_rows = session.execute(
        select(Stock.sku, Stock.warehouse, Stock.on_hand, Stock.reserved)
        .where(Stock.sku.in_(skus))
        .order_by(Stock.sku, Stock.warehouse)
        .with_for_update()
    ).all()
    available = {(r.sku, r.warehouse): r.on_hand - r.reserved for r in stock_rows}

    now = utcnow()
    expires = now + timedelta(seconds=settings.reservation_ttl_s)
    increments: dict[tuple[str, str], int] = defaultdict(int)
    reservations, moves, placed = [], [], []
    for order in orders:  # oldest id first: first paid, first served
        lines = lines_by_order[order.id]
        wh = choose_warehouse([(ln.sku, ln.quantity) for ln in lines], available, warehouses,
                              order.ship_country)
        if wh is None:
            outcome.backordered.append(order.id)
            if order.state != State.BACKORDERED:
                short = sorted({ln.sku for ln in lines
                                if max((available.get((ln.sku, w), 0) for w in warehouses),
                                       default=0) < ln.quantity})
                moves.append(Move(order.id, State(order.state), State.BACKORDERED,
                                  {"short_skus": short}))
            continue
        for ln in lines:
            available[(ln.sku, wh)] -= ln.quantity
            increments[(ln.sku, wh)] += ln.quantity
            reservations.append({"order_line_id": ln.id, "order_id": order.id, "sku": ln.sku,
                                 "warehouse": wh, "quantity": ln.quantity, "status": "active",
                                 "created_at": now, "expires_at": expires})
        placed.append({"id": order.id, "warehouse": wh})
        moves.append(Move(order.id, State(order.state), State.RESERVED, {"warehouse": wh}))
        outcome.reserved.append(order.id)

    if increments:
        # Guarded increment: matches no row (and the rowcount check fails) if stock went short.
        stmt = (
            update(Stock)
            .where(and_(Stock.sku == bindparam("b_sku"), Stock.warehouse == bindparam("b_wh"),
                        Stock.on_hand - Stock.reserved >= bindparam("b_qty")))
            .values(reserved=Stock.reserved + bindparam("b_qty"), updated_at=now)
        )
        params = [{"b_sku": s, "b_wh": w, "b_qty": q} for (s, w), q in sorted(increments.items())]
        res = session.connection().execute(stmt, params)
        if res.rowcount != len(params):
            raise RuntimeError("stock changed under a held lock; refusing to reserve")
        session.execute(insert(Reservation), reservations)
        session.execute(update(OrderRow), placed)
    apply_transitions(session, moves, stage="inventory")
    return outcome


def release_reservations(uow: UnitOfWork, order_ids: list[int], reason: str) -> int:
    """Give back the stock held by active reservations of these orders. Returns units freed."""
    session = uow.session
    rows = session.execute(
        select(Reservation.id, Reservation.sku, Reservation.warehouse, Reservation.quantity)
        .where(Reservation.order_id.in_(order_ids), Reservation.status == "active")
        .order_by(Reservation.sku, Reservation.warehouse)
        .with_for_update()
    ).all()
    if not rows:
        return 0
    now = utcnow()
    dec: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        dec[(r.sku, r.warehouse)] += r.quantity
    _lock_stock(uow, list(dec))
    session.connection().execute(
        update(Stock)
        .where(and_(Stock.sku == bindparam("b_sku"), Stock.warehouse == bindparam("b_wh")))
        .values(reserved=Stock.reserved - bindparam("b_qty"), updated_at=now),
        [{"b_sku": s, "b_wh": w, "b_qty": q} for (s, w), q in sorted(dec.items())],
    )
    session.execute(
        update(Reservation)
        .where(Reservation.id.in_([r.id for r in rows]))
        .values(status="released", closed_at=now, close_reason=reason)
    )
    return sum(dec.values())


def consume_reservations(uow: UnitOfWork, order_ids: list[int]) -> int:
    """Stock leaves the warehouse: the label is bought. Returns units shipped."""
    session = uow.session
    rows = session.execute(
        select(Reservation.id, Reservation.sku, Reservation.warehouse, Reservation.quantity)
        .where(Reservation.order_id.in_(order_ids), Reservation.status == "active")
    ).all()
    if not rows:
        return 0
    now = utcnow()
    dec: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        dec[(r.sku, r.warehouse)] += r.quantity
    _lock_stock(uow, list(dec))
    session.connection().execute(
        update(Stock)
        .where(and_(Stock.sku == bindparam("b_sku"), Stock.warehouse == bindparam("b_wh")))
        .values(on_hand=Stock.on_hand - bindparam("b_qty"),
                reserved=Stock.reserved - bindparam("b_qty"), updated_at=now),
        [{"b_sku": s, "b_wh": w, "b_qty": q} for (s, w), q in sorted(dec.items())],
    )
    session.execute(
        update(Reservation).where(Reservation.id.in_([r.id for r in rows]))
        .values(status="consumed", closed_at=now, close_reason="label bought")
    )
    return sum(dec.values())


def _lock_stock(uow: UnitOfWork, keys: list[tuple[str, str]]) -> None:
    # Same sorted lock order as reserve_orders, so release/consume never deadlock with it.
    if keys:
        uow.session.execute(
            select(Stock.sku).where(tuple_(Stock.sku, Stock.warehouse).in_(sorted(keys)))
            .order_by(Stock.sku, Stock.warehouse).with_for_update()
        ).all()


def expire_stale_reservations(uow: UnitOfWork, settings: Settings, limit: int = 1000) -> list[int]:
    """Release reservations of orders that sat in ``reserved`` past the TTL; return order ids.

    The orders go back to fraud_checked, so the next re-drive reserves them afresh.
    """
    session = uow.session
    now = utcnow()
    stale = session.execute(
        select(Reservation.order_id).distinct()
        .join(OrderRow, OrderRow.id == Reservation.order_id)
        .where(Reservation.status == "active", Reservation.expires_at < now,
               OrderRow.state == State.RESERVED.value)
        .limit(limit)
    ).scalars().all()
    orders = claim(session, stale, [State.RESERVED])
    ids = [o.id for o in orders]
    if ids:
        release_reservations(uow, ids, "expired")
        apply_transitions(session, [Move(i, State.RESERVED, State.FRAUD_CHECKED,
                                         {"reason": "reservation expired"}) for i in ids],
                          stage="inventory")
        log.info("released expired reservations of %d orders", len(ids))
    return ids


@stage_task("orderfleet.inventory.reserve")
def reserve(self, order_ids: list[int]) -> None:  # type: ignore[no-untyped-def]
    from tasks.sharding import assign

    settings = get_settings()
    ids = parse_ids(order_ids)
    try:
        with unit_of_work(settings) as uow:
            outcome = reserve_orders(uow, ids, settings)
            if outcome.reserved:
                uow.after_commit(lambda: assign.delay(outcome.reserved))
    except TRANSIENT_ERRORS as exc:
        retry_backoff(self, exc)


@stage_task("orderfleet.inventory.expire_reservations")
def expire_reservations(self) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    with unit_of_work(settings) as uow:
        expire_stale_reservations(uow, settings)


def wake_backordered(settings: Settings, skus: list[str] | None = None) -> int:
    """Re-enqueue backordered orders (for these SKUs) after new stock arrived."""
    with unit_of_work(settings) as uow:
        q = select(OrderRow.id).where(OrderRow.state == State.BACKORDERED.value)
        if skus:
            q = q.where(OrderRow.id.in_(select(OrderLine.order_id).where(OrderLine.sku.in_(skus))))
        ids = list(uow.session.execute(q.order_by(OrderRow.id)).scalars())
        for part in chunks(ids, settings.batch_size):
            uow.after_commit(lambda part=part: reserve.delay(part))
    return len(ids)
