"""The returns lane: a reverse flow beside the forward one, on its own queue.

request -> return label -> received (inspected) -> restocked or written off -> refund notice
to the store. A parcel back without a request (an order cancelled after handover) is received
through a return opened on arrival (``receive_order_return``): restock and refund notice have
this one path. Each step is a guarded UPDATE on the return's status, so a step run twice does
nothing the second time; the return label carries an idempotency key (one per return), so a
retried purchase returns the same label. The returns queue has its own messages and its own
sweep: a flood of returns waits there and never delays a forward order's stage.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import func, select, update

from config.settings import Settings
from domain.alerts import raise_alert
from domain.carriers import CarrierAdapter, CarrierRejected, LabelRequest
from domain.clock import utcnow
from domain.db import UnitOfWork, insert_ignoring_conflicts, unit_of_work
from domain.lifecycle import Move, State, apply_transitions
from domain.models import (
    OrderLine,
    OrderRow,
    ReturnRequest,
    ReturnStatus,
    Shipment,
    ShipmentStatus,
    Warehouse,
)
from domain.notifications import notify_store
from domain.reservations import restock_orders
from domain.routing import carrier_for

ISSUE_RETURN_LABELS = "orderfleet.returns.issue_labels"
SETTLE_RETURNS = "orderfleet.returns.settle"
RETURNS_QUEUE = "returns"
CONDITIONS = ("resellable", "damaged")
# Orders a customer can send back: the parcel reached them (or is on its way).
RETURNABLE = (State.DELIVERED, State.IN_TRANSIT)


class ReturnRefused(ValueError):
    """The order cannot be returned (not delivered, unknown) or the step does not apply."""


def return_key(order_id: int) -> str:
    return f"orderfleet-return-{order_id}"


def _lock_order(uow: UnitOfWork, order_id: int) -> tuple[State, int | None]:
    """Lock the order (which serialises opening and receiving its return) and read its state
    and its return's id, if it has one."""
    session = uow.session
    state = session.execute(select(OrderRow.state).where(OrderRow.id == order_id)
                            .with_for_update()).scalar_one_or_none()
    if state is None:
        raise ReturnRefused(f"no order {order_id}")
    return_id = session.execute(select(ReturnRequest.id).where(
        ReturnRequest.order_id == order_id)).scalar_one_or_none()
    return State(state), return_id


def request_return(uow: UnitOfWork, order_id: int, reason: str) -> int:
    """Open the return of a delivered order (once); its label is bought after the commit."""
    session = uow.session
    state, existing = _lock_order(uow, order_id)
    if existing is not None:
        return existing
    if state not in RETURNABLE:
        raise ReturnRefused(f"order {order_id} is {state}: only a delivered (or shipped) "
                            "order can be returned")
    now = utcnow()
    rows = insert_ignoring_conflicts(session, ReturnRequest, [{
        "order_id": order_id, "status": ReturnStatus.REQUESTED, "reason": reason[:1000],
        "requested_at": now, "updated_at": now, "idempotency_key": return_key(order_id),
        "label_attempts": 0}], ["order_id"], returning=[ReturnRequest.id])
    if not rows:  # opened by a concurrent request after our check
        return int(session.execute(select(ReturnRequest.id).where(
            ReturnRequest.order_id == order_id)).scalar_one())
    return_id = rows[0].id
    apply_transitions(session, [Move(order_id, state, State.RETURN_REQUESTED,
                                     {"return_id": return_id, "reason": reason[:200]})],
                      stage="returns")
    uow.enqueue(ISSUE_RETURN_LABELS, [return_id], queue=RETURNS_QUEUE)
    return int(return_id)


@dataclass
class ReturnLabelOutcome:
    issued: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def _label_requests(uow: UnitOfWork, return_ids: list[int]) -> dict[int, LabelRequest]:
    """Return labels to buy: from the customer's address back to the shipping warehouse."""
    session = uow.session
    countries = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    rows = session.execute(
        select(ReturnRequest.id, ReturnRequest.idempotency_key, OrderRow)
        .join(OrderRow, OrderRow.id == ReturnRequest.order_id)
        .where(ReturnRequest.id.in_(return_ids),
               ReturnRequest.status == ReturnStatus.REQUESTED)
    ).all()
    out: dict[int, LabelRequest] = {}
    settings = uow.settings
    for return_id, key, order in rows:
        warehouse = order.warehouse or ""
        home = countries.get(warehouse, order.ship_country)
        to_address = settings.ship_from_addresses.get(warehouse)
        carrier, _ = carrier_for(order.ship_country, home)
        out[return_id] = LabelRequest(
            idempotency_key=key, carrier=carrier, service="ground",
            from_country=order.ship_country, to_country=home,
            to_postal_code=(to_address or {}).get("postal_code", ""),
            weight_g=max(order.weight_g, 1), reference=f"return/{order.store}/"
                                                       f"{order.source_order_id}",
            to_address=to_address, from_address=order.payload.get("shipping_address"))
    return out


def issue_return_labels(return_ids: list[int], settings: Settings,
                        client: CarrierAdapter) -> ReturnLabelOutcome:
    """Buy the return labels of requested returns; no transaction is open during the calls.

    ``CarrierUnavailable`` propagates (the task retries); a refusal is recorded and alerted.
    """
    with unit_of_work(settings) as uow:
        requests = _label_requests(uow, return_ids)
        if requests:
            uow.session.execute(update(ReturnRequest).where(ReturnRequest.id.in_(requests))
                                .values(label_attempts=ReturnRequest.label_attempts + 1))
    out = ReturnLabelOutcome()
    labels = {}
    for return_id, request in sorted(requests.items()):
        try:
            labels[return_id] = client.buy_label(request)
        except CarrierRejected as exc:
            out.failed[return_id] = exc.error
    with unit_of_work(settings) as uow:
        now = utcnow()
        for return_id, label in labels.items():
            done = uow.session.execute(
                update(ReturnRequest)
                .where(ReturnRequest.id == return_id,
                       ReturnRequest.status == ReturnStatus.REQUESTED)
                .values(status=ReturnStatus.LABEL_ISSUED, carrier=label.carrier,
                        label_id=label.label_id, tracking_number=label.tracking_number,
                        updated_at=now, error=None)
                .returning(ReturnRequest.id)).scalar_one_or_none()
            if done is not None:
                out.issued.append(return_id)
        for return_id, error in out.failed.items():
            uow.session.execute(update(ReturnRequest).where(ReturnRequest.id == return_id)
                                .values(error=error[:1000], updated_at=now))
            raise_alert(uow.session, "return_label_failed", str(return_id),
                        f"return {return_id}: the carrier refused the return label "
                        f"({error[:200]})", severity="warning")
    return out


def receive_return(uow: UnitOfWork, return_id: int, condition: str) -> bool:
    """The parcel is back and inspected; settling (restock or write-off) follows after the
    commit. False when it was received already."""
    if condition not in CONDITIONS:
        raise ReturnRefused(f"condition must be one of {CONDITIONS}")
    now = utcnow()
    done = uow.session.execute(
        update(ReturnRequest)
        .where(ReturnRequest.id == return_id,
               ReturnRequest.status.in_([ReturnStatus.REQUESTED, ReturnStatus.LABEL_ISSUED]))
        .values(status=ReturnStatus.RECEIVED, condition=condition, received_at=now,
                updated_at=now)
        .returning(ReturnRequest.id)).scalar_one_or_none()
    if done is None:
        if uow.session.get(ReturnRequest, return_id) is None:
            raise ReturnRefused(f"no return {return_id}")
        return False
    uow.enqueue(SETTLE_RETURNS, [return_id], queue=RETURNS_QUEUE)
    return True


def receive_order_return(uow: UnitOfWork, order_id: int, condition: str,
                         reason: str = "parcel came back without a return request") -> bool:
    """An order's parcel is back: received through its return, the one path to restock (or
    write-off) and refund notice. An order shipped without a return request (cancelled after
    handover, or sent back unasked) gets one opened and received here, in this transaction:
    with one return row per order, the settling runs once whichever way it came in. False
    when it was received already."""
    if condition not in CONDITIONS:
        raise ReturnRefused(f"condition must be one of {CONDITIONS}")
    session = uow.session
    state, return_id = _lock_order(uow, order_id)
    if return_id is not None:
        return receive_return(uow, return_id, condition)
    if state == State.RETURNED:
        return False  # received before returns had rows of their own
    if state not in (State.RETURN_REQUESTED, *RETURNABLE):
        raise ReturnRefused(f"order {order_id} is {state}: it never left the warehouse")
    now = utcnow()
    rows = insert_ignoring_conflicts(session, ReturnRequest, [{
        "order_id": order_id, "status": ReturnStatus.RECEIVED, "reason": reason[:1000],
        "requested_at": now, "updated_at": now, "received_at": now, "condition": condition,
        "idempotency_key": return_key(order_id), "label_attempts": 0}],
        ["order_id"], returning=[ReturnRequest.id])
    if not rows:  # cannot happen under the order's lock; if it did, the row is not ours
        raise ReturnRefused(f"order {order_id}: a return was opened concurrently, retry")
    return_id = rows[0].id
    if state != State.RETURN_REQUESTED:
        apply_transitions(session, [Move(order_id, state, State.RETURN_REQUESTED,
                                         {"return_id": return_id, "reason": reason[:200]})],
                          stage="returns")
    uow.enqueue(SETTLE_RETURNS, [return_id], queue=RETURNS_QUEUE)
    return True


def settle_returns(uow: UnitOfWork, return_ids: list[int]) -> dict[str, list[int]]:
    """Received returns: restock resellable units or write damaged ones off, close the order
    (returned) and queue the refund notice to the store, all in one transaction."""
    session = uow.session
    rows = session.execute(
        select(ReturnRequest.id, ReturnRequest.order_id, ReturnRequest.condition,
               OrderRow.total_usd)
        .join(OrderRow, OrderRow.id == ReturnRequest.order_id)
        .where(ReturnRequest.id.in_(return_ids), ReturnRequest.status == ReturnStatus.RECEIVED)
        .with_for_update(of=ReturnRequest, skip_locked=True)
    ).all()
    out: dict[str, list[int]] = defaultdict(list)
    now = utcnow()
    for return_id, order_id, condition, total_usd in rows:
        status = (ReturnStatus.RESTOCKED if condition == "resellable"
                  else ReturnStatus.WRITTEN_OFF)
        session.execute(update(ReturnRequest).where(ReturnRequest.id == return_id)
                        .values(status=status, updated_at=now,
                                refund_usd=Decimal(total_usd)))
        out[status.value].append(order_id)
    restock_orders(uow, out.get(ReturnStatus.RESTOCKED.value, []), "returned")
    order_ids = [o for ids in out.values() for o in ids]
    if order_ids:
        apply_transitions(session, [Move(o, State.RETURN_REQUESTED, State.RETURNED,
                                         {"reason": "return settled"}) for o in order_ids],
                          stage="returns")
        session.execute(update(Shipment).where(Shipment.order_id.in_(order_ids))
                        .values(status=ShipmentStatus.RETURNED))
        notify_store(uow, order_ids, "refund_due")
    return dict(out)


def stuck_returns(uow: UnitOfWork, deadline_s: float, limit: int = 1000
                  ) -> dict[str, list[int]]:
    """Returns waiting past the deadline for their label or their settling (a lost message)."""
    cutoff = utcnow() - timedelta(seconds=deadline_s)
    rows = uow.session.execute(
        select(ReturnRequest.id, ReturnRequest.status)
        .where(ReturnRequest.status.in_([ReturnStatus.REQUESTED, ReturnStatus.RECEIVED]),
               ReturnRequest.updated_at < cutoff)
        .order_by(ReturnRequest.id).limit(limit)).all()
    out: dict[str, list[int]] = defaultdict(list)
    for return_id, status in rows:
        out[status].append(return_id)
    return dict(out)


def sku_return_rates(uow: UnitOfWork, min_shipped: int) -> dict[str, tuple[int, int]]:
    """Per SKU with at least ``min_shipped`` shipped orders: (orders returned, shipped)."""
    session = uow.session
    shipped_states = [s.value for s in (State.IN_TRANSIT, State.DELIVERED,
                                         State.RETURN_REQUESTED, State.RETURNED)]
    shipped = dict(session.execute(
        select(OrderLine.sku, func.count(func.distinct(OrderLine.order_id)))
        .join(OrderRow, OrderRow.id == OrderLine.order_id)
        .where(OrderRow.state.in_(shipped_states))
        .group_by(OrderLine.sku)).all())
    returned = dict(session.execute(
        select(OrderLine.sku, func.count(func.distinct(OrderLine.order_id)))
        .join(ReturnRequest, ReturnRequest.order_id == OrderLine.order_id)
        .group_by(OrderLine.sku)).all())
    return {sku: (returned.get(sku, 0), n) for sku, n in shipped.items() if n >= min_shipped}


def flag_high_return_skus(uow: UnitOfWork, threshold: float, min_shipped: int) -> list[str]:
    """Raise an alert (once while open) for each SKU returned more often than ``threshold``."""
    flagged = []
    for sku, (returned, shipped) in sorted(sku_return_rates(uow, min_shipped).items()):
        if returned / shipped > threshold:
            flagged.append(sku)
            raise_alert(uow.session, "sku_return_rate", sku,
                        f"SKU {sku}: {returned} of {shipped} shipped orders returned "
                        f"({returned / shipped:.1%} > {threshold:.0%})", severity="warning",
                        detail={"returned": returned, "shipped": shipped})
    return flagged
