"""Intake: validate paid orders, persist them, and start the pipeline after the commit.

``submit_orders`` is the one way in (Python call, CLI, and later the HTTP webhook). It is
idempotent: an order is unique per (source, store, source order id), so a storefront that
submits the same paid order twice gets one order and one pipeline run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import insert

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, insert_ignoring_conflicts, unit_of_work
from domain.lifecycle import State
from domain.models import OrderEvent, OrderLine, OrderRow, RejectedOrder
from domain.schemas import Order, OrderValidationError, parse_order
from tasks.base import chunks

log = logging.getLogger(__name__)


@dataclass
class Rejection:
    index: int
    source_order_id: str | None
    errors: list[dict[str, str]]

    @property
    def reason(self) -> str:
        return "; ".join(f"{e['field']}: {e['message']}" for e in self.errors)


@dataclass
class SubmitResult:
    accepted: list[int] = field(default_factory=list)  # new order ids (internal)
    duplicates: list[str] = field(default_factory=list)  # source order ids already known
    rejected: list[Rejection] = field(default_factory=list)


def to_usd(amount: Decimal, currency: str, settings: Settings) -> Decimal:
    rate = settings.fx_rates_to_usd[currency]
    return (amount * rate).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def validate(payload: Any, settings: Settings, *, store: str | None = None) -> Order:
    """Parse a payload and apply the checks that need configuration."""
    order = parse_order(payload, store=store)
    if order.currency not in settings.fx_rates_to_usd:
        raise OrderValidationError(
            [{"field": "currency", "message": f"no exchange rate configured for {order.currency}"}]
        )
    return order


def _raw_id(payload: Any) -> str | None:
    if isinstance(payload, dict):
        value = payload.get("order_id", payload.get("id"))
        return None if value is None else str(value)[:255]
    return None


def _order_row(order: Order, settings: Settings, now: Any) -> dict[str, Any]:
    return {
        "source": order.source,
        "store": order.store,
        "source_order_id": order.order_id,
        "state": State.RECEIVED.value,
        "paid_at": order.paid_at,
        "received_at": now,
        "updated_at": now,
        "currency": order.currency,
        "total": order.totals.total,
        "total_usd": to_usd(order.totals.total, order.currency, settings),
        "customer_id": order.customer.id,
        "ship_country": order.shipping_address.country,
        "weight_g": order.weight_g,
        "payload": order.model_dump(mode="json"),
    }


def persist_orders(
    uow: UnitOfWork, payloads: list[Any], settings: Settings, *, source_hint: str = "native",
    store: str | None = None,
) -> SubmitResult:
    """Validate and store orders; store rejects with their reasons. Sends nothing."""
    result = SubmitResult()
    session = uow.session
    now = utcnow()
    valid: dict[tuple[str, str, str], Order] = {}
    rejected_rows = []
    for i, payload in enumerate(payloads):
        try:
            order = validate(payload, settings, store=store)
        except OrderValidationError as exc:
            rej = Rejection(i, _raw_id(payload), exc.errors)
            result.rejected.append(rej)
            rejected_rows.append({
                "received_at": now,
                "source": "shopify" if isinstance(payload, dict) and "line_items" in payload
                else source_hint,
                "store": (payload.get("store") if isinstance(payload, dict) else None) or store,
                "source_order_id": rej.source_order_id,
                "reason": rej.reason[:4000],
                "errors": rej.errors,
                "raw": json.dumps(payload, default=str, ensure_ascii=False),
            })
            continue
        key = (order.source, order.store, order.order_id)
        if key in valid:
            result.duplicates.append(order.order_id)
        else:
            valid[key] = order
    if rejected_rows:
        session.execute(insert(RejectedOrder), rejected_rows)
        log.info("rejected %d payloads at intake", len(rejected_rows))

    orders = list(valid.values())
    for part in chunks(list(range(len(orders))), settings.batch_size):
        batch = [orders[i] for i in part]
        inserted = insert_ignoring_conflicts(
            session, OrderRow, [_order_row(o, settings, now) for o in batch],
            ["source", "store", "source_order_id"],
            returning=[OrderRow.id, OrderRow.source, OrderRow.store, OrderRow.source_order_id],
        )
        new = {(r.source, r.store, r.source_order_id): r.id for r in inserted}
        lines, events = [], []
        for o in batch:
            order_id = new.get((o.source, o.store, o.order_id))
            if order_id is None:
                result.duplicates.append(o.order_id)
                continue
            result.accepted.append(order_id)
            events.append({"order_id": order_id, "at": now, "stage": "intake",
                           "from_state": None, "to_state": State.RECEIVED.value,
                           "detail": None})
            for n, line in enumerate(o.lines, start=1):
                lines.append({"order_id": order_id, "line_no": n, "sku": line.sku,
                              "quantity": line.quantity, "unit_price": line.unit_price,
                              "weight_g": line.weight_g})
        if lines:
            session.execute(insert(OrderLine), lines)
            session.execute(insert(OrderEvent), events)
    return result


def submit_orders(
    payloads: list[Any], *, settings: Settings | None = None, source_hint: str = "native",
    store: str | None = None,
) -> SubmitResult:
    """Validate, persist, commit, then enqueue the fraud check for the new orders only."""
    from tasks.fraud import check  # the next stage

    settings = settings or get_settings()
    with unit_of_work(settings) as uow:
        result = persist_orders(uow, payloads, settings, source_hint=source_hint, store=store)
        for part in chunks(result.accepted, settings.batch_size):
            uow.after_commit(lambda part=part: check.delay(part))
    return result


def submit_order(payload: Any, *, settings: Settings | None = None) -> SubmitResult:
    return submit_orders([payload], settings=settings)
