"""Intake: validate paid orders, persist them, and start the pipeline after the commit.

Two ways in share one persistence path:

* ``submit_orders`` (Python call, ``orderfleet submit`` for JSON and CSV feeds): idempotent on
  the order key (source, store, source order id), so a store that submits the same paid order
  twice gets one order and one pipeline run.
* ``accept_delivery`` (the HTTP front door, ``workers.api``): one webhook delivery from Shopify,
  WooCommerce or a custom storefront. Each delivery is written to the webhook inbox under the
  store's event id (``X-Shopify-Event-Id``, ``X-WC-Webhook-Delivery-ID``, ``Idempotency-Key``)
  in the same transaction as the order change it causes, so a redelivery does nothing. A
  delivery older than the last change we applied (``X-Shopify-Triggered-At``, WooCommerce's
  ``date_modified_gmt``) is stale and never rolls an order back.

A payload that cannot become an order is kept whole in ``rejected_orders`` with the failing
fields, for ops; personal data never reaches info-level logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from sqlalchemy import delete, insert, select, tuple_, update

from config.settings import Settings, get_settings
from domain.alerts import raise_alert
from domain.cancellation import cancel_orders
from domain.clock import utcnow
from domain.db import (
    UnitOfWork,
    any_row_of,
    chunks,
    insert_ignoring_conflicts,
    insert_rows,
    unit_of_work,
)
from domain.fastlane import is_fast_lane
from domain.intake_exceptions import (
    HELD_ALERT,
    ExceptionDeskError,
    get_exception,
    parsed_body,
    require_open,
    settle,
)
from domain.lifecycle import EDITABLE, FINAL, State
from domain.models import (
    OrderEvent,
    OrderRow,
    RejectedOrder,
    WebhookDelivery,
    order_events_table,
    order_lines_table,
)
from domain.pipeline import advance
from domain.platforms import (
    WOO_CANCELLED_STATUSES,
    WOO_PAID_STATUSES,
    parse_order_csv,
    woocommerce_to_native,
)
from domain.routing import lane_for
from domain.schemas import (
    NothingToShip,
    Order,
    OrderValidationError,
    hold_reasons,
    parse_order,
    shopify_to_native,
)

log = logging.getLogger(__name__)

# Shopify financial statuses of an order whose payment is captured.
SHOPIFY_PAID = frozenset({"paid", "partially_refunded"})


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
    held: list[int] = field(default_factory=list)  # of accepted: on_hold for a person

    @property
    def to_pipeline(self) -> list[int]:
        held = set(self.held)
        return [i for i in self.accepted if i not in held]


def to_usd(amount: Decimal, currency: str, settings: Settings) -> Decimal:
    rate = settings.fx_rates_to_usd[currency]
    return (amount * rate).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def validate(payload: Any, settings: Settings, *, store: str | None = None,
             platform: str | None = None) -> Order:
    """Parse a payload and apply the checks that need configuration.

    ``platform="woocommerce"`` maps a WooCommerce order object first; Shopify bodies are
    recognised by ``parse_order`` itself.
    """
    try:
        if platform == "woocommerce" and isinstance(payload, dict):
            payload = woocommerce_to_native(payload, store=store or "")
        order = parse_order(payload, store=store)
    except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        if isinstance(exc, OrderValidationError):
            raise
        # A shape no mapping foresaw: kept with a reason like any other, never a 5xx.
        log.warning("could not map a %s payload: %s", platform or "native/shopify",
                    type(exc).__name__)
        raise OrderValidationError([{"field": "(order)", "message":
                                     f"could not be read ({type(exc).__name__})"}]) from None
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


def _order_row(order: Order, settings: Settings, now: Any,
               source_updated_at: datetime | None = None) -> dict[str, Any]:
    held = hold_reasons(order)
    payload = order.model_dump(mode="json")
    # The lane is known on arrival, so every stage (and surge control) can serve it first.
    lane = lane_for(payload, settings.lanes_of(order.store))
    return {
        "source": order.source,
        "store": order.store,
        "source_order_id": order.order_id,
        # What a person must look at first holds the order for the review desk.
        "state": (State.ON_HOLD if held else State.RECEIVED).value,
        "hold_reason": ("intake: " + "; ".join(held))[:4000] if held else None,
        "paid_at": order.paid_at,
        "received_at": now,
        "updated_at": now,
        "currency": order.currency,
        "total": order.totals.total,
        "total_usd": to_usd(order.totals.total, order.currency, settings),
        "customer_id": order.customer.id,
        "ship_country": order.shipping_address.country,
        "weight_g": order.weight_g,
        "lane": lane,
        "payload": payload,
        "source_updated_at": source_updated_at,
        "fast_lane": is_fast_lane(payload, lane),
    }


def storable_text(text: str) -> str:
    """PostgreSQL text holds neither NUL nor lone surrogates: keep them visible, escaped."""
    text = text.replace("\x00", "\\u0000")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def record_rejection(uow: UnitOfWork, *, source: str, store: str | None, raw: str,
                     errors: list[dict[str, str]], source_order_id: str | None = None,
                     topic: str | None = None, http_status: int | None = None) -> int:
    """Keep a payload that could not become an order, whole, with the failing fields.

    It is an open intake exception until a person replays (corrected) or drops it.
    """
    errors = [{k: storable_text(str(v))[:1000] for k, v in e.items()} for e in errors]
    reason = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return int(uow.session.execute(insert(RejectedOrder).values(
        received_at=utcnow(), source=source[:32], store=storable_text(store)[:255] if store
        else None,
        source_order_id=storable_text(source_order_id)[:255] if source_order_id else None,
        reason=reason[:4000], topic=storable_text(topic)[:64] if topic else None,
        http_status=http_status, errors=errors, raw=storable_text(raw))
        .returning(RejectedOrder.id)).scalar_one())


def insert_orders(uow: UnitOfWork, orders: list[Order], settings: Settings, *,
                  source_updated_at: datetime | None = None,
                  updated_at_by_key: dict[tuple[str, str, str], datetime | None] | None = None,
                  new_ids: dict[tuple[str, str, str], int] | None = None,
                  held: set[int] | None = None,
                  ) -> tuple[list[int], list[str]]:
    """Insert valid orders with their lines and first event; return (new ids, duplicates).

    ``updated_at_by_key``: each order's ``source_updated_at`` by (source, store, order id),
    when they differ (a group of webhooks); otherwise ``source_updated_at`` for all.
    ``new_ids`` is filled with the id of each inserted order by that key; ``held`` with the
    ids of new orders kept ``on_hold`` for a person (:func:`domain.schemas.hold_reasons`).
    """
    session = uow.session
    now = utcnow()
    accepted: list[int] = []
    duplicates: list[str] = []
    for part in chunks(list(range(len(orders))), settings.batch_size):
        batch = [orders[i] for i in part]
        rows = [_order_row(o, settings, now, (updated_at_by_key or {}).get(
            (o.source, o.store, o.order_id), source_updated_at)) for o in batch]
        inserted = insert_ignoring_conflicts(
            session, OrderRow, rows, ["source", "store", "source_order_id"],
            returning=[OrderRow.id, OrderRow.source, OrderRow.store, OrderRow.source_order_id],
        )
        new = {(r.source, r.store, r.source_order_id): r.id for r in inserted}
        if new_ids is not None:
            new_ids.update(new)
        lines, events = [], []
        for o, row in zip(batch, rows, strict=True):
            order_id = new.get((o.source, o.store, o.order_id))
            if order_id is None:
                duplicates.append(o.order_id)
                continue
            accepted.append(order_id)
            if row["hold_reason"] and held is not None:
                held.add(order_id)
            events.append({"order_id": order_id, "at": now, "stage": "intake",
                           "from_state": None, "to_state": row["state"],
                           "detail": {"hold_reason": row["hold_reason"]} if row["hold_reason"]
                           else None})
            for n, line in enumerate(o.lines, start=1):
                lines.append({"order_id": order_id, "line_no": n, "sku": line.sku,
                              "quantity": line.quantity, "unit_price": line.unit_price,
                              "weight_g": line.weight_g})
        if new:
            _supersede_exceptions(uow, new)
        if lines:
            # Core, not the ORM's bulk path: these rows need no identity map.
            insert_rows(session, order_lines_table, lines)
            insert_rows(session, order_events_table, events)
    return accepted, duplicates


def _supersede_exceptions(uow: UnitOfWork, new: dict[tuple[str, str, str], int]) -> None:
    """A later delivery made the order: its open exceptions at the door are settled by it."""
    open_rows = uow.session.execute(
        select(RejectedOrder.id, RejectedOrder.source, RejectedOrder.store,
               RejectedOrder.source_order_id)
        .where(RejectedOrder.status == "open",
               any_row_of(uow.session, (RejectedOrder.source, RejectedOrder.store,
                                        RejectedOrder.source_order_id), new))).all()
    if open_rows:
        now = utcnow()
        uow.session.execute(update(RejectedOrder), [
            {"id": r.id, "status": "superseded", "resolved_at": now, "resolved_by": "intake",
             "order_id": new[(r.source, r.store or "", r.source_order_id or "")],
             "resolution": "a later delivery of the same order became the order"}
            for r in open_rows])


def persist_orders(
    uow: UnitOfWork, payloads: list[Any], settings: Settings, *, source_hint: str = "native",
    store: str | None = None,
) -> SubmitResult:
    """Validate and store orders; store rejects with their reasons. Sends nothing.

    ``source_hint`` names the platform for rejects (and ``woocommerce`` maps WooCommerce order
    objects); valid orders carry their own ``source``.
    """
    result = SubmitResult()
    now = utcnow()
    platform = source_hint if source_hint == "woocommerce" else None
    valid: dict[tuple[str, str, str], Order] = {}
    rejected_rows = []
    for i, payload in enumerate(payloads):
        try:
            order = validate(payload, settings, store=store, platform=platform)
        except OrderValidationError as exc:
            rej = Rejection(i, _raw_id(payload), exc.errors)
            result.rejected.append(rej)
            rejected_rows.append({
                "received_at": now,
                "source": "shopify" if platform is None and isinstance(payload, dict)
                and "line_items" in payload else source_hint,
                "store": (payload.get("store") if isinstance(payload, dict) else None) or store,
                "source_order_id": rej.source_order_id,
                "reason": storable_text(rej.reason)[:4000],
                "errors": [{k: storable_text(str(v)) for k, v in e.items()} for e in rej.errors],
                "raw": storable_text(json.dumps(payload, default=str, ensure_ascii=False)),
            })
            continue
        key = (order.source, order.store, order.order_id)
        if key in valid:
            result.duplicates.append(order.order_id)
        else:
            valid[key] = order
    if rejected_rows:
        uow.session.execute(insert(RejectedOrder), rejected_rows)
        log.info("rejected %d payloads at intake", len(rejected_rows))
    held: set[int] = set()
    accepted, duplicates = insert_orders(uow, list(valid.values()), settings, held=held)
    result.accepted.extend(accepted)
    result.held.extend(i for i in accepted if i in held)
    result.duplicates.extend(duplicates)
    return result


def submit_orders(
    payloads: list[Any], *, settings: Settings | None = None, source_hint: str = "native",
    store: str | None = None,
) -> SubmitResult:
    """Validate, persist, commit, then enqueue the fraud check for the new orders only."""
    settings = settings or get_settings()
    with unit_of_work(settings) as uow:
        result = persist_orders(uow, payloads, settings, source_hint=source_hint, store=store)
        start_pipeline(uow, result.to_pipeline)
    return result


def submit_csv_feed(text: str, *, settings: Settings | None = None,
                    store: str | None = None) -> tuple[SubmitResult, list[dict[str, Any]]]:
    """Import a CSV order feed (``orderfleet submit --format csv``); return the result and the
    rows that could not join an order (kept in ``rejected_orders`` like any reject).

    Raises :class:`domain.platforms.OrderFeedError` when the feed as a whole is unreadable.
    """
    settings = settings or get_settings()
    feed = parse_order_csv(text, store=store)
    with unit_of_work(settings) as uow:
        result = persist_orders(uow, feed.orders, settings, source_hint="csv", store=store)
        for e in feed.errors:
            record_rejection(uow, source="csv", store=store,
                             raw=json.dumps(e["raw"], ensure_ascii=False),
                             errors=[{"field": f"row {e['row']}: {e['field']}",
                                      "message": e["message"]}],
                             source_order_id=e["order_id"])
        start_pipeline(uow, result.to_pipeline)
    return result, feed.errors


def submit_order(payload: Any, *, settings: Settings | None = None) -> SubmitResult:
    return submit_orders([payload], settings=settings)


def start_pipeline(uow: UnitOfWork, order_ids: list[int]) -> None:
    """New orders go on to the fraud check, in micro-batches, once the transaction committed."""
    advance(uow, State.RECEIVED, order_ids)


# --------------------------------------------------------------------------------------------
# Webhook deliveries (the HTTP front door)
# --------------------------------------------------------------------------------------------

# What a platform's topic means to the pipeline.
Action = Literal["paid", "cancelled", "updated", "ignored"]

TOPIC_ACTIONS: dict[tuple[str, str], Action] = {
    ("shopify", "orders/paid"): "paid",
    ("shopify", "orders/cancelled"): "cancelled",
    ("shopify", "orders/updated"): "updated",
    # WooCommerce fires order.created at checkout, often before payment: the status decides.
    ("woocommerce", "order.created"): "updated",
    ("woocommerce", "order.updated"): "updated",
    ("woocommerce", "order.restored"): "updated",
    ("woocommerce", "order.deleted"): "cancelled",
    ("native", "orders/create"): "paid",
}


@dataclass(frozen=True)
class Delivery:
    """One authenticated webhook delivery (the signature was checked by the caller)."""

    source: str  # shopify | woocommerce | native
    store: str
    event_id: str
    topic: str
    body: bytes
    payload: Any
    triggered_at: datetime | None = None


@dataclass
class DeliveryResult:
    status: str  # created | on_hold | held | nothing_to_ship | duplicate | duplicate_order |
    #              cancelled | updated | too_late | stale | ignored | awaiting_order |
    #              already_final | rejected | conflict
    http_status: int = 200
    order_id: int | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    new_order_ids: list[int] = field(default_factory=list)  # for the fraud stage
    exception_id: int | None = None  # held at the door: the exceptions desk's id

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.order_id is not None:
            out["order_id"] = self.order_id
        if self.exception_id is not None:
            out["exception_id"] = self.exception_id
        if self.errors:
            out["errors"] = self.errors
        return out


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 time as aware UTC; None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _source_order_id(d: Delivery) -> str | None:
    if not isinstance(d.payload, dict):
        return None
    value = d.payload.get("order_id" if d.source == "native" else "id")
    return None if value in (None, "") else str(value)[:255]


def _word(value: Any) -> str:
    """A status as sent, when it is a string at all."""
    return value if isinstance(value, str) else ""


def _is_cancelled(d: Delivery) -> bool:
    p = d.payload
    if d.source == "shopify":
        return bool(p.get("cancelled_at"))
    if d.source == "woocommerce":
        return _word(p.get("status")) in WOO_CANCELLED_STATUSES
    return False


def _is_paid(d: Delivery) -> bool:
    p = d.payload
    if d.source == "shopify":
        return _word(p.get("financial_status")) in SHOPIFY_PAID
    if d.source == "woocommerce":
        return _word(p.get("status")) in WOO_PAID_STATUSES
    return True


def accept_delivery(uow: UnitOfWork, d: Delivery, settings: Settings, *,
                    enqueue: bool = True) -> DeliveryResult:
    """Apply one webhook delivery exactly once, in the caller's transaction.

    ``enqueue``: send new orders to the fraud stage after the commit; the HTTP service passes
    False and batches ``new_order_ids`` itself.

    Raises nothing for bad input. A JSON object that cannot become an order yet is held at
    the door: kept in ``rejected_orders`` (an open intake exception, for the exceptions desk)
    with the failing fields and answered ``held`` (200 to a platform, which must not retry a
    body that cannot change; 202 to the native API); its inbox row stays, so a redelivery is a
    duplicate. A body that is no order at all (not a JSON object) is ``rejected`` (422) and
    leaves no inbox row. Orders whose lines are all digital or another fulfilment service's
    are ``nothing_to_ship``.
    """
    session = uow.session
    sha = hashlib.sha256(d.body).hexdigest()
    action: Action = TOPIC_ACTIONS.get((d.source, d.topic), "ignored")
    source_order_id = _source_order_id(d)
    inbox = insert_ignoring_conflicts(session, WebhookDelivery, [{
        "source": d.source, "store": d.store, "event_id": d.event_id[:255],
        "topic": d.topic[:64], "received_at": utcnow(), "triggered_at": d.triggered_at,
        "source_order_id": source_order_id, "outcome": "pending", "body_sha256": sha,
    }], ["source", "store", "event_id"], returning=[WebhookDelivery.id])
    if not inbox:
        return _duplicate(uow, d, sha)
    inbox_id = inbox[0].id
    try:
        if not isinstance(d.payload, dict):
            raise OrderValidationError([{"field": "(body)", "message": "expected a JSON object"}])
        if action == "ignored":
            result = DeliveryResult("ignored")
        elif source_order_id is None:
            field_name = "order_id" if d.source == "native" else "id"
            raise OrderValidationError([{"field": field_name, "message": "Field required"}])
        elif action == "paid":
            result = _on_paid(uow, d, settings)
        elif action == "cancelled":
            result = _on_cancelled(uow, d, source_order_id)
        else:  # "updated"
            result = _on_updated(uow, d, settings, source_order_id)
    except OrderValidationError as exc:
        result = hold_at_door(uow, d, exc, source_order_id)
        if result.status == "rejected":
            session.execute(delete(WebhookDelivery).where(WebhookDelivery.id == inbox_id))
            return result
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == inbox_id)
                    .values(outcome=result.status, order_id=result.order_id))
    if enqueue:
        start_pipeline(uow, result.new_order_ids)
    return result


def hold_at_door(uow: UnitOfWork, d: Delivery, exc: OrderValidationError,
                 source_order_id: str | None) -> DeliveryResult:
    """Keep a delivery that cannot become an order (yet) as an intake exception.

    Returns ``nothing_to_ship``, ``held`` (kept, 200 or 202) or ``rejected`` (kept, 422: the
    body is not a JSON object, so it is no order at all).
    """
    if isinstance(exc, NothingToShip):
        log.info("%s order for store %s has nothing to ship", d.source, d.store)
        return DeliveryResult("nothing_to_ship")
    is_order = isinstance(d.payload, dict)
    code = (202 if d.source == "native" else 200) if is_order else 422
    exception_id = record_rejection(uow, source=d.source, store=d.store,
                                    raw=d.body.decode("utf-8", "replace"), errors=exc.errors,
                                    source_order_id=source_order_id, topic=d.topic,
                                    http_status=code)
    log.info("held a %s %s delivery for store %s as exception %s: %d field errors", d.source,
             d.topic, d.store, exception_id, len(exc.errors))
    if not is_order:
        return DeliveryResult("rejected", 422, errors=exc.errors)
    raise_alert(uow.session, HELD_ALERT, f"{d.source}/{d.store}"[:255],
                f"{d.source} deliveries for store {d.store} are held at the door: see "
                "`orderfleet exceptions list`", detail={"first_exception_id": exception_id})
    return DeliveryResult("held", code, errors=exc.errors, exception_id=exception_id)


def accept_deliveries(uow: UnitOfWork, deliveries: list[Delivery], settings: Settings, *,
                      enqueue: bool = True) -> list[DeliveryResult]:
    """Apply a group of deliveries in one transaction (the HTTP service's group commit).

    Same outcome as ``accept_delivery`` on each in turn, but the common case, a new paid
    order, costs a few multi-row statements for the whole group instead of six per webhook.
    """
    results: list[DeliveryResult | None] = [None] * len(deliveries)
    session = uow.session
    paid: dict[tuple[str, str, str], int] = {}  # inbox key -> index of its first delivery
    repeats: list[tuple[int, int]] = []  # (index, index of the first with the same key)
    for i, d in enumerate(deliveries):
        key = (d.source, d.store, d.event_id[:255])
        if TOPIC_ACTIONS.get((d.source, d.topic)) != "paid" or _source_order_id(d) is None \
                or not isinstance(d.payload, dict):
            results[i] = accept_delivery(uow, d, settings, enqueue=False)
        elif key in paid:
            repeats.append((i, paid[key]))
        else:
            paid[key] = i
    if paid:
        _accept_paid_group(uow, deliveries, paid, results, settings)
    for i, first in repeats:
        prior = results[first]
        assert prior is not None
        results[i] = _duplicate(uow, deliveries[i], hashlib.sha256(deliveries[i].body)
                                .hexdigest()) if prior.status != "rejected" else prior
    out = [r for r in results if r is not None]
    assert len(out) == len(deliveries)
    if enqueue:
        start_pipeline(uow, [i for r in out for i in r.new_order_ids])
    session.flush()
    return out


def _accept_paid_group(uow: UnitOfWork, deliveries: list[Delivery],
                       paid: dict[tuple[str, str, str], int],
                       results: list[DeliveryResult | None], settings: Settings) -> None:
    session = uow.session
    now = utcnow()
    inserted = insert_ignoring_conflicts(session, WebhookDelivery, [{
        "source": d.source, "store": d.store, "event_id": key[2], "topic": d.topic[:64],
        "received_at": now, "triggered_at": d.triggered_at,
        "source_order_id": _source_order_id(d), "outcome": "pending",
        "body_sha256": hashlib.sha256(d.body).hexdigest(),
    } for key, i in paid.items() for d in [deliveries[i]]], ["source", "store", "event_id"],
        returning=[WebhookDelivery.id, WebhookDelivery.source, WebhookDelivery.store,
                   WebhookDelivery.event_id])
    inbox = {(r.source, r.store, r.event_id): r.id for r in inserted}
    orders: dict[tuple[str, str, str], tuple[int, Order]] = {}  # order key -> (index, order)
    later: list[tuple[int, tuple[str, str, str]]] = []  # same order, another event id
    rejected: list[int] = []
    for key, i in paid.items():
        d = deliveries[i]
        if key not in inbox:
            results[i] = _duplicate(uow, d, hashlib.sha256(d.body).hexdigest())
            continue
        try:
            order = _paid_order(d, settings)
        except OrderValidationError as exc:
            held_result = results[i] = hold_at_door(uow, d, exc, _source_order_id(d))
            if held_result.status == "rejected":
                rejected.append(inbox[key])
            continue
        okey = (order.source, order.store, order.order_id)
        if okey in orders:
            later.append((i, okey))
        else:
            orders[okey] = (i, order)
    if rejected:
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(rejected)))
    new_ids: dict[tuple[str, str, str], int] = {}
    held: set[int] = set()
    insert_orders(uow, [o for _, o in orders.values()], settings, new_ids=new_ids, held=held,
                  updated_at_by_key={k: deliveries[i].triggered_at
                                     for k, (i, _) in orders.items()})
    ids = {k: (v, True) for k, v in new_ids.items()}
    ids.update({k: (v, False) for k, v in _existing_ids(uow, [k for k in orders
                                                             if k not in new_ids]).items()})
    new = set(new_ids)
    awaiting = _awaiting_cancellation(uow, new)
    to_cancel = [ids[k][0] for k in new if k in awaiting or _is_cancelled(deliveries[orders[k][0]])]
    if to_cancel:
        cancel_orders(uow, to_cancel, "cancelled in the store before intake")
    created = 201  # the native endpoint's "created"; webhooks answer 200
    for k, (i, _) in orders.items():
        order_id, is_new = ids[k]
        code = created if is_new and deliveries[i].source == "native" else 200
        if not is_new:
            results[i] = DeliveryResult("duplicate_order", 200, order_id)
        elif order_id in to_cancel:
            results[i] = DeliveryResult("cancelled", code, order_id)
        elif order_id in held:
            results[i] = DeliveryResult("on_hold", code, order_id)
        else:
            results[i] = DeliveryResult("created", code, order_id, new_order_ids=[order_id])
    for i, k in later:
        results[i] = DeliveryResult("duplicate_order", 200, ids[k][0])
    updates = [{"id": inbox[key], "outcome": r.status, "order_id": r.order_id}
               for key, i in paid.items() if key in inbox
               for r in [results[i]] if r is not None and r.status != "rejected"]
    if updates:
        session.execute(update(WebhookDelivery), updates)


def _paid_order(d: Delivery, settings: Settings) -> Order:
    payload = d.payload
    if d.source == "native":
        if "line_items" in payload:
            raise OrderValidationError([{"field": "line_items", "message":
                                         "Shopify-shaped bodies go to /webhooks/shopify/{shop}"}])
        # The authenticated store owns the order; a body naming another store is refused.
        if payload.get("store") not in (None, "", d.store):
            raise OrderValidationError([{"field": "store", "message":
                                         f"must be {d.store!r}, the authenticated store"}])
        payload = {**payload, "store": d.store, "source": "native"}
    return validate(payload, settings, store=d.store,
                    platform="woocommerce" if d.source == "woocommerce" else None)


def _existing_ids(uow: UnitOfWork, keys: list[tuple[str, str, str]]
                  ) -> dict[tuple[str, str, str], int]:
    """The ids of orders already known, by (source, store, order id)."""
    if not keys:
        return {}
    return {(r.source, r.store, r.source_order_id): r.id for r in uow.session.execute(
        select(OrderRow.source, OrderRow.store, OrderRow.source_order_id, OrderRow.id)
        .where(tuple_(OrderRow.source, OrderRow.store, OrderRow.source_order_id).in_(keys))
    ).all()}


def _awaiting_cancellation(uow: UnitOfWork, keys: set[tuple[str, str, str]]
                           ) -> set[tuple[str, str, str]]:
    if not keys:
        return set()
    rows = uow.session.execute(
        select(WebhookDelivery.source, WebhookDelivery.store, WebhookDelivery.source_order_id)
        .where(WebhookDelivery.outcome == "awaiting_order",
               tuple_(WebhookDelivery.source, WebhookDelivery.store,
                      WebhookDelivery.source_order_id).in_(list(keys)))
    ).all()
    # The IN above matches no NULL order id; the column allows one.
    return {(source, store, oid) for source, store, oid in rows if oid is not None}


def _duplicate(uow: UnitOfWork, d: Delivery, sha: str) -> DeliveryResult:
    prior = uow.session.execute(
        select(WebhookDelivery.order_id, WebhookDelivery.body_sha256)
        .where(WebhookDelivery.source == d.source, WebhookDelivery.store == d.store,
               WebhookDelivery.event_id == d.event_id[:255])
    ).one()
    if d.source == "native" and prior.body_sha256 != sha:
        return DeliveryResult("conflict", 409, prior.order_id, errors=[{
            "field": "header Idempotency-Key",
            "message": "already used for a different request body"}])
    return DeliveryResult("duplicate", 200, prior.order_id)


def _find_order(uow: UnitOfWork, d: Delivery, source_order_id: str) -> OrderRow | None:
    return uow.session.execute(
        select(OrderRow).where(OrderRow.source == d.source, OrderRow.store == d.store,
                               OrderRow.source_order_id == source_order_id)
        .with_for_update()
    ).scalar_one_or_none()


def _on_paid(uow: UnitOfWork, d: Delivery, settings: Settings) -> DeliveryResult:
    order = _paid_order(d, settings)
    (accepted, _) = insert_orders(uow, [order], settings, source_updated_at=d.triggered_at)
    if not accepted:
        existing = _find_order(uow, d, order.order_id)
        return DeliveryResult("duplicate_order", 200, existing.id if existing else None)
    order_id = accepted[0]
    awaiting = uow.session.execute(
        select(WebhookDelivery.id).where(
            WebhookDelivery.source == d.source, WebhookDelivery.store == d.store,
            WebhookDelivery.source_order_id == order.order_id,
            WebhookDelivery.outcome == "awaiting_order").limit(1)
    ).first()
    if awaiting or _is_cancelled(d):
        # The cancellation overtook the paid webhook: the order starts and ends here.
        cancel_orders(uow, [order_id], f"cancelled in {d.source} before intake")
        return DeliveryResult("cancelled", 201 if d.source == "native" else 200, order_id)
    if hold_reasons(order):
        return DeliveryResult("on_hold", 201 if d.source == "native" else 200, order_id)
    return DeliveryResult("created", 201 if d.source == "native" else 200, order_id,
                          new_order_ids=[order_id])


def _on_cancelled(uow: UnitOfWork, d: Delivery, source_order_id: str) -> DeliveryResult:
    row = _find_order(uow, d, source_order_id)
    if row is None:
        return DeliveryResult("awaiting_order")  # the paid webhook will find this one
    # A store's cancellation is final even when delivered late: it is applied, never "stale".
    reason = str(d.payload.get("cancel_reason") or "")[:100]
    out = cancel_orders(uow, [row.id], f"cancelled in {d.source}" + (f": {reason}" if reason
                                                                       else ""))
    if d.triggered_at and (row.source_updated_at is None or d.triggered_at > row.source_updated_at):
        row.source_updated_at = d.triggered_at
    return DeliveryResult("already_final" if row.id in out.unchanged else "cancelled", 200, row.id)


def _on_updated(uow: UnitOfWork, d: Delivery, settings: Settings,
                source_order_id: str) -> DeliveryResult:
    row = _find_order(uow, d, source_order_id)
    if row is None:
        if _is_cancelled(d):
            return DeliveryResult("awaiting_order")
        if _is_paid(d):  # orders/updated can overtake orders/paid
            return _on_paid(uow, d, settings)
        return DeliveryResult("ignored")  # not paid yet: orders/paid will bring it
    if d.triggered_at and row.source_updated_at and d.triggered_at <= row.source_updated_at:
        return DeliveryResult("stale", 200, row.id)
    if _is_cancelled(d):
        return _on_cancelled(uow, d, source_order_id)
    if State(row.state) == State.SPLIT:
        # Final for the parent, but its parts hold the stock already (reserved in the split's
        # transaction): as for any reserved order, an address change now needs a person.
        log.warning("order %s changed in the store after it was split; change not applied",
                    row.id)
        return DeliveryResult("too_late", 200, row.id)
    if State(row.state) in FINAL:  # nothing left to change for a closed order
        return DeliveryResult("already_final", 200, row.id)
    order = validate(d.payload, settings, store=d.store,
                     platform="woocommerce" if d.source == "woocommerce" else None)
    if d.triggered_at:
        row.source_updated_at = d.triggered_at
    if State(row.state) not in EDITABLE:
        # Stock is reserved or the parcel labelled: an address change now needs a person.
        log.warning("order %s changed in the store after %s; change not applied", row.id,
                    row.state)
        return DeliveryResult("too_late", 200, row.id)
    new = order.model_dump(mode="json")
    changed = {k for k in ("shipping_address", "billing_address", "tags", "customer")
               if new.get(k) != row.payload.get(k)}
    if changed:
        # Lines and totals stay as paid: a line edit after payment is a new fulfilment problem.
        row.payload = {**row.payload, **{k: new[k] for k in changed}}
        row.ship_country = order.shipping_address.country
        row.updated_at = utcnow()
        uow.session.add(OrderEvent(order_id=row.id, at=row.updated_at, stage="intake",
                                   from_state=row.state, to_state=row.state,
                                   detail={"updated": sorted(changed)}))
    return DeliveryResult("updated", 200, row.id)


# --------------------------------------------------------------------------------------------
# The exceptions desk: replay a held delivery, corrected
# --------------------------------------------------------------------------------------------


def _merge(base: Any, fix: Any) -> Any:
    """``fix`` laid over ``base``: objects merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(fix, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in fix.items()}}
    return fix


def native_form(source: str, store: str | None, body: Any) -> dict[str, Any]:
    """A kept body in the native schema, as the door mapped it (corrections apply to this)."""
    if not isinstance(body, dict):
        return {}
    if source == "woocommerce":
        return woocommerce_to_native(body, store=store or "")
    if source == "shopify" or "line_items" in body:
        return shopify_to_native(body, store=store)
    return {**body, "store": body.get("store") or store or ""}


def replay_exception(uow: UnitOfWork, exception_id: int, settings: Settings, *, by: Any,
                     corrections: Any = None) -> dict[str, Any]:
    """Turn a held delivery into an order: its body, mapped to the native schema, with a
    person's ``corrections`` (native field names, e.g. ``{"shipping_address": {...}}``) laid
    over it. The order starts the pipeline after the commit (or waits ``on_hold`` when a hold
    reason remains). Raises :class:`ExceptionDeskError` (422 with the fields still failing)
    and leaves the exception open when it still cannot become an order.
    """
    if not isinstance(by, str) or not by.strip():
        raise ExceptionDeskError("by: is required (who replays it)", status=422)
    if corrections is not None and not isinstance(corrections, dict):
        raise ExceptionDeskError("corrections: must be a JSON object", status=422)
    row = get_exception(uow.session, exception_id, lock=True)
    require_open(row)
    native = native_form(row.source, row.store, parsed_body(row))
    if not native and not corrections:
        raise ExceptionDeskError("the kept body is no JSON object: give the whole order in "
                                 "corrections", status=422)
    payload = _merge(native, corrections or {})
    try:
        order = validate(payload, settings, store=row.store)
    except OrderValidationError as exc:
        raise ExceptionDeskError(f"exception {row.id} still cannot become an order: {exc}",
                                 status=422, errors=exc.errors) from None
    held: set[int] = set()
    new_ids: dict[tuple[str, str, str], int] = {}
    insert_orders(uow, [order], settings, held=held, new_ids=new_ids)
    key = (order.source, order.store, order.order_id)
    if key in new_ids:
        order_id, outcome = new_ids[key], "replayed"
        if order_id not in held:
            start_pipeline(uow, [order_id])
        resolution = "replayed" + (" with corrections to " + ", ".join(sorted(corrections))
                                   if corrections else "")
    else:  # the order exists already (another delivery made it)
        existing = _existing_ids(uow, [key])
        order_id, outcome = existing[key], "superseded"
        resolution = "the order already existed"
    row.corrections = corrections or None
    settle(row, outcome, by.strip()[:255], resolution, order_id)
    log.info("exceptions desk: %s %s as order %s", row.id, outcome, order_id)
    return {"id": row.id, "status": outcome, "order_id": order_id,
            "on_hold": order_id in held}
