"""One order's whole story, for ``orderfleet status``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from domain.deadletters import for_order as dead_letters_for_order
from domain.models import OrderEvent, OrderRow, Shipment


def find_order(session: Session, order_id: str, store: str | None = None) -> OrderRow | None:
    """By the store's order id (optionally with the store) or by the internal numeric id."""
    conds = [OrderRow.source_order_id == order_id]
    if order_id.isdigit():
        conds.append(OrderRow.id == int(order_id))
    q = select(OrderRow).where(or_(*conds))
    if store:
        q = q.where(OrderRow.store == store)
    rows = session.execute(q.order_by(OrderRow.id)).scalars().all()
    # A store id that equals someone's internal id: the store's id wins.
    exact = [r for r in rows if r.source_order_id == order_id]
    found = exact or rows
    return found[0] if found else None


def order_status(
    session: Session, order_id: str, store: str | None = None
) -> dict[str, Any] | None:
    order = find_order(session, order_id, store)
    if order is None:
        return None
    events = session.execute(
        select(OrderEvent).where(OrderEvent.order_id == order.id).order_by(OrderEvent.id)
    ).scalars().all()
    shipment = session.execute(
        select(Shipment).where(Shipment.order_id == order.id)).scalar_one_or_none()
    # A split order's parts (one per warehouse), each with its own state and parcel.
    parts = session.execute(
        select(OrderRow.id, OrderRow.part_no, OrderRow.source_order_id, OrderRow.state,
               OrderRow.warehouse, Shipment.tracking_number)
        .outerjoin(Shipment, Shipment.order_id == OrderRow.id)
        .where(OrderRow.parent_id == order.id).order_by(OrderRow.part_no)).all()
    return {
        "id": order.id,
        "store": order.store,
        "source": order.source,
        "source_order_id": order.source_order_id,
        "state": order.state,
        "paid_at": order.paid_at.isoformat(),
        "total": str(order.total),
        "currency": order.currency,
        "total_usd": str(order.total_usd),
        "lane": order.lane,
        "warehouse": order.warehouse,
        "wave_id": order.wave_id,
        "fraud_score": order.fraud_score,
        "fraud_reasons": order.fraud_reasons or [],
        "hold_reason": order.hold_reason,
        "parent_id": order.parent_id,
        "part_no": order.part_no,
        "parts": [{"id": p.id, "part_no": p.part_no, "source_order_id": p.source_order_id,
                   "state": p.state, "warehouse": p.warehouse,
                   "tracking_number": p.tracking_number} for p in parts],
        "shipment": None if shipment is None else {
            "carrier": shipment.carrier, "service": shipment.service,
            "label_id": shipment.label_id, "tracking_number": shipment.tracking_number,
            "status": shipment.status, "tracking_status": shipment.tracking_status,
        },
        "events": [{"at": e.at.isoformat(), "stage": e.stage, "from_state": e.from_state,
                    "to_state": e.to_state, "detail": e.detail} for e in events],
        # Messages about this order that no worker could complete, and why.
        "dead_letters": dead_letters_for_order(session, order.id),
    }
