"""Reservations after the reservation stage: released, consumed, restocked.

The reservation stage (``tasks.inventory``) creates them; cancellation, the label stage, the
review desk and returns close them through these functions, each in the caller's
transaction. Every change of units locks its stock rows in the one global order
(``domain.stock.stock_lock_order``), the same as the reserving batches, so none of them can
deadlock with another; freed units wake the backordered orders they can serve, after the
commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import BindParameter, Integer, and_, bindparam, select, update

from domain.clock import utcnow
from domain.db import UnitOfWork, any_of, any_row_of, unnest_rows
from domain.models import Reservation, Stock
from domain.models import ReservationStatus as R
from domain.pipeline import WAKE_BACKORDERED
from domain.stock import stock_lock_order


def lock_stock_rows(uow: UnitOfWork, keys: list[tuple[str, str]]) -> None:
    """Lock these stock rows in the one global lock order (``stock_lock_order``), so releases,
    consumption, imports and reservations never deadlock."""
    if keys:
        uow.session.execute(
            select(Stock.sku)
            .where(any_row_of(uow.session, (Stock.sku, Stock.warehouse), sorted(set(keys))))
            .order_by(*stock_lock_order(uow.session)).with_for_update()
        ).all()


def _wake_after_commit(uow: UnitOfWork, skus: Iterable[str]) -> None:
    """Units came back to these SKUs: re-try the backordered orders they can now serve."""
    wanted = sorted(set(skus))
    if wanted:
        uow.enqueue(WAKE_BACKORDERED, wanted)


def _close_reservations(uow: UnitOfWork, order_ids: list[int], *, status: R, to: R,
                        reason: str, on_hand: int, reserved: int) -> dict[tuple[str, str], int]:
    """Move these orders' reservations in ``status`` to ``to`` and apply their units to stock
    (``on_hand``/``reserved`` are the signs, -1, 0 or +1). Returns units per (sku, warehouse).

    Reservations first, then stock in the sorted order every stock writer uses, so these moves
    never deadlock with a reserving batch.
    """
    session = uow.session
    rows = session.execute(
        select(Reservation.id, Reservation.sku, Reservation.warehouse, Reservation.quantity)
        .where(any_of(session, Reservation.order_id, order_ids), Reservation.status == status)
        .order_by(Reservation.id)
        .with_for_update()
    ).all()
    units: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        units[(r.sku, r.warehouse)] += r.quantity
    if not rows:
        return units
    now = utcnow()
    lock_stock_rows(uow, list(units))
    if session.get_bind().dialect.name == "postgresql":
        v = unnest_rows(Stock, [{"sku": s, "warehouse": w, "qty": q}
                                for (s, w), q in sorted(units.items())], {"qty": Integer()})
        session.execute(
            update(Stock).where(and_(Stock.sku == v.c.sku, Stock.warehouse == v.c.warehouse))
            .values(on_hand=Stock.on_hand + on_hand * v.c.qty,
                    reserved=Stock.reserved + reserved * v.c.qty, updated_at=now))
    else:
        qty: BindParameter[int] = bindparam("b_qty")
        session.connection().execute(
            update(Stock)
            .where(and_(Stock.sku == bindparam("b_sku"), Stock.warehouse == bindparam("b_wh")))
            .values(on_hand=Stock.on_hand + on_hand * qty,
                    reserved=Stock.reserved + reserved * qty, updated_at=now),
            [{"b_sku": s, "b_wh": w, "b_qty": q} for (s, w), q in sorted(units.items())],
        )
    session.execute(
        update(Reservation).where(any_of(session, Reservation.id, [r.id for r in rows]))
        .values(status=to, closed_at=now, close_reason=reason[:64])
    )
    return units


def release_reservations(uow: UnitOfWork, order_ids: list[int], reason: str) -> int:
    """Give back the stock held by active reservations of these orders. Returns units freed.

    Backordered orders that the freed units can serve are re-tried after the commit.
    """
    units = _close_reservations(uow, order_ids, status=R.ACTIVE, to=R.RELEASED, reason=reason,
                                on_hand=0, reserved=-1)
    if units:
        _wake_after_commit(uow, (s for s, _ in units))
    return sum(units.values())


def consume_reservations(uow: UnitOfWork, order_ids: list[int]) -> int:
    """Stock leaves the warehouse: the label is bought. Returns units shipped."""
    units = _close_reservations(uow, order_ids, status=R.ACTIVE, to=R.CONSUMED,
                                reason="label bought", on_hand=-1, reserved=-1)
    return sum(units.values())


def restock_orders(uow: UnitOfWork, order_ids: list[int], reason: str) -> int:
    """Put the units of these orders' consumed reservations back on the shelf; return units.

    For a label voided before hand-over and for a return. Idempotent: each restocked
    reservation is marked ``restocked`` in the same transaction, so a second call finds none.
    Backordered orders that the units can serve are re-tried after the commit.
    """
    units = _close_reservations(uow, order_ids, status=R.CONSUMED, to=R.RESTOCKED,
                                reason=reason, on_hand=1, reserved=0)
    if units:
        _wake_after_commit(uow, (s for s, _ in units))
    return sum(units.values())
