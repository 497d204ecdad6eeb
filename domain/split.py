"""Split shipments: an order no single warehouse can serve becomes one part per warehouse.

Modelled on Shopify's fulfillment orders (one per location): the parent keeps the store's
order and moves to ``split``, a final state it never leaves (it is never waved or labelled);
each part is an order of its own (``parent_id``, ``part_no``) that the pipeline reserves,
waves and labels like any other, and whose label is reported to the store as a fulfilment of
the parent's platform order with the part's lines only.

A part's key is ``<parent's store order id>~<n>``, unique per (source, store) like every order,
and parts are written in the transaction that moves the parent to ``split``: a re-run (a
redelivered message) finds the parent split already, and could not insert a part twice anyway.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.db import UnitOfWork, any_of, insert_ignoring_conflicts
from domain.lifecycle import State
from domain.models import OrderLine, OrderRow, order_events_table, order_lines_table
from domain.routing import WarehousePlan

CENT = Decimal("0.01")


def part_key(parent_source_order_id: str, part_no: int) -> str:
    """The store order id of a part: the parent's, then ``~n``. Should a store ever use such an
    id itself, the unique key refuses the clash rather than merging two orders."""
    return f"{parent_source_order_id}~{part_no}"


def parts_of(session: Session, parent_ids: Iterable[int]) -> dict[int, list[int]]:
    """The part ids of each split parent among ``parent_ids``, by part number."""
    out: dict[int, list[int]] = defaultdict(list)
    ids = sorted(set(parent_ids))
    if not ids:
        return {}
    for part_id, parent_id in session.execute(
            select(OrderRow.id, OrderRow.parent_id)
            .where(any_of(session, OrderRow.parent_id, ids))
            .order_by(OrderRow.parent_id, OrderRow.part_no)):
        if parent_id is not None:
            out[parent_id].append(part_id)
    return dict(out)


def _money(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def _part_payload(payload: dict[str, Any], skus: set[str], part_no: int, parts: int,
                  parent_id: int, subtotal: Decimal, shipping: Decimal) -> dict[str, Any]:
    """The parent's order JSON with only the part's lines: the platform order id is kept, so
    push-back reports to the same platform order. Tax and discount stay on the parent's
    record: the part's totals are its lines, plus the shipping charge on part 1."""
    total = subtotal + shipping
    return {
        **payload,
        "lines": [line for line in payload.get("lines", []) if str(line.get("sku")) in skus],
        "totals": {"subtotal": str(subtotal), "shipping": str(shipping), "tax": "0",
                   "discount": "0", "total": str(total),
                   "tax_included": bool((payload.get("totals") or {}).get("tax_included"))},
        "split": {"parent_id": parent_id, "part": part_no, "of": parts},
    }


def split_orders(uow: UnitOfWork, plans: dict[int, WarehousePlan]) -> dict[int, list[int]]:
    """Insert one fraud-checked part per warehouse of each parent's split plan, with its lines
    and first event; return the part ids of each parent (by part number).

    The caller moves the parents to ``split`` in the same transaction. Parts start in
    ``fraud_checked``: the fraud check passed on the parent, and the event says so.
    """
    session = uow.session
    parent_ids = sorted(plans)
    if not parent_ids:
        return {}
    parents = {o.id: o for o in session.execute(
        select(OrderRow).where(any_of(session, OrderRow.id, parent_ids))).scalars()}
    lines_of: dict[int, list[Any]] = defaultdict(list)
    for line in session.execute(
            select(OrderLine).where(any_of(session, OrderLine.order_id, parent_ids))
            .order_by(OrderLine.order_id, OrderLine.line_no)).scalars():
        lines_of[line.order_id].append(line)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    part_lines: dict[tuple[str, str, str], list[Any]] = {}
    meta: dict[tuple[str, str, str], tuple[int, int]] = {}  # key -> (parent id, part no)
    for parent_id in parent_ids:
        parent, plan = parents[parent_id], plans[parent_id]
        warehouses = sorted(plan.parts)  # part numbers follow the warehouse codes: stable
        shipping_total = _money((parent.payload.get("totals") or {}).get("shipping") or 0)
        for n, wh in enumerate(warehouses, start=1):
            skus = set(plan.parts[wh])
            mine = [ln for ln in lines_of[parent_id] if ln.sku in skus]
            subtotal = sum((ln.unit_price * ln.quantity for ln in mine), Decimal("0"))
            subtotal = _money(subtotal)
            shipping = shipping_total if n == 1 else Decimal("0.00")
            total = subtotal + shipping
            total_usd = (_money(parent.total_usd * total / parent.total) if parent.total
                         else Decimal("0.00"))
            key = (parent.source, parent.store, part_key(parent.source_order_id, n))
            rows.append({
                "source": parent.source, "store": parent.store, "source_order_id": key[2],
                "state": State.FRAUD_CHECKED.value, "paid_at": parent.paid_at,
                "received_at": parent.received_at, "updated_at": now,
                "currency": parent.currency, "total": total, "total_usd": total_usd,
                "customer_id": parent.customer_id, "ship_country": parent.ship_country,
                "weight_g": sum(ln.weight_g * ln.quantity for ln in mine),
                "lane": parent.lane, "fraud_score": parent.fraud_score,
                "fraud_reasons": parent.fraud_reasons,
                "payload": _part_payload(parent.payload, skus, n, len(warehouses), parent_id,
                                         subtotal, shipping),
                "source_updated_at": parent.source_updated_at, "fast_lane": parent.fast_lane,
                "parent_id": parent_id, "part_no": n,
            })
            part_lines[key] = mine
            meta[key] = (parent_id, n)
    inserted = insert_ignoring_conflicts(
        session, OrderRow, rows, ["source", "store", "source_order_id"],
        returning=[OrderRow.id, OrderRow.source, OrderRow.store, OrderRow.source_order_id])
    new = {(r.source, r.store, r.source_order_id): r.id for r in inserted}
    lines, events = [], []
    for key, part_id in new.items():
        parent_id, n = meta[key]
        for line_no, ln in enumerate(part_lines[key], start=1):
            lines.append({"order_id": part_id, "line_no": line_no, "sku": ln.sku,
                          "quantity": ln.quantity, "unit_price": ln.unit_price,
                          "weight_g": ln.weight_g})
        events.append({"order_id": part_id, "at": now, "stage": "inventory", "from_state": None,
                       "to_state": State.FRAUD_CHECKED.value,
                       "detail": {"split_from": parent_id, "part": n,
                                  "fraud_check": f"passed on the parent order {parent_id}"}})
    if lines:
        session.connection().execute(insert(order_lines_table), lines)
    if events:
        session.connection().execute(insert(order_events_table), events)
    # Parts written by an earlier attempt (none when the parent was claimed in a splittable
    # state, but never counted twice) are found by their parent.
    return parts_of(session, parent_ids)
