"""The manual review desk: orders the fraud check held, and a person's decision on each.

* :func:`pending_reviews` lists orders waiting (``on_hold``), oldest first;
* :func:`review_detail` shows one with everything a reviewer needs (verdict and reasons,
  addresses, payment results, the customer's history, earlier decisions, the event log);
* :func:`approve_order` resumes the pipeline at reservation (``on_hold -> fraud_checked``, then
  the reservation stage after the commit) and adds the order to the customer's history;
* :func:`cancel_order` ends it (``on_hold -> cancelled``) and releases anything reserved;
* :func:`raise_overdue_alerts` (beat) raises a ``review_overdue`` alert per order waiting past
  ``review_overdue_s``, and resolves the alerts of orders no longer waiting.

Every decision is stored in ``review_decisions`` with who, when and why, in the transaction that
moves the order; two reviewers deciding the same order at once cannot both win (the second
finds it no longer on hold). The desk shows personal data to the reviewer; logs never carry it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from domain.alerts import open_alerts, raise_alert, resolve_alert
from domain.clock import utcnow
from domain.db import UnitOfWork
from domain.fraud.address import address_key
from domain.fraud.profile import Accepted, card_key, ip_country, record_accepted
from domain.lifecycle import EDITABLE, IllegalTransition, State, transition
from domain.models import (
    CustomerProfile,
    OrderEvent,
    OrderLine,
    OrderRow,
    ReviewDecision,
)
from domain.pipeline import advance
from domain.reservations import release_reservations
from domain.schemas import Address
from domain.status import find_order

log = logging.getLogger(__name__)

ALERT_KIND = "review_overdue"
DECISIONS = ("approve", "cancel")
MAX_REASON = 2000
MAX_OVERDUE_PER_SWEEP = 1000


class ReviewError(Exception):
    """A decision the desk cannot take; ``status`` is the matching HTTP status."""

    status = 400


class OrderNotFound(ReviewError):
    status = 404

    def __init__(self, ref: str) -> None:
        super().__init__(f"no order {ref}")


class NotOnHold(ReviewError):
    status = 409

    def __init__(self, order_id: int, state: str) -> None:
        self.order_id, self.state = order_id, state
        super().__init__(f"order {order_id} is {state}, not waiting for review")


class InvalidDecision(ReviewError):
    status = 422

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Decision:
    order_id: int
    decision: str  # approve | cancel
    decided_by: str
    reason: str
    decided_at: datetime
    to_state: str
    waited_s: int
    released_units: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "decision": self.decision,
                "decided_by": self.decided_by, "reason": self.reason,
                "decided_at": self.decided_at.isoformat(), "state": self.to_state,
                "waited_s": self.waited_s, "released_units": self.released_units}


def _waiting_s(row: OrderRow, now: datetime) -> int:
    return max(0, int((now - row.updated_at).total_seconds()))


def _summary(row: OrderRow, now: datetime, overdue_s: float) -> dict[str, Any]:
    waited = _waiting_s(row, now)
    return {
        "id": row.id,
        "store": row.store,
        "source_order_id": row.source_order_id,
        "state": row.state,
        "paid_at": row.paid_at.isoformat(),
        "held_since": row.updated_at.isoformat(),
        "waiting_s": waited,
        "overdue": waited > overdue_s,
        "total": str(row.total),
        "currency": row.currency,
        "total_usd": str(row.total_usd),
        "ship_country": row.ship_country,
        "fraud_score": row.fraud_score,
        "fraud_reasons": row.fraud_reasons or [],
        "hold_reason": row.hold_reason,
    }


def pending_reviews(session: Session, settings: Settings, *, limit: int = 100,
                    store: str | None = None, overdue_only: bool = False) -> list[dict[str, Any]]:
    """Orders waiting for a person, oldest first."""
    now = utcnow()
    q = select(OrderRow).where(OrderRow.state == State.ON_HOLD.value)
    if store:
        q = q.where(OrderRow.store == store)
    if overdue_only:
        q = q.where(OrderRow.updated_at < now - timedelta(seconds=settings.review_overdue_s))
    rows = session.execute(q.order_by(OrderRow.updated_at, OrderRow.id).limit(limit)).scalars()
    return [_summary(r, now, settings.review_overdue_s) for r in rows]


def _decision_json(d: ReviewDecision) -> dict[str, Any]:
    return {"decision": d.decision, "decided_by": d.decided_by, "reason": d.reason,
            "decided_at": d.decided_at.isoformat(), "hold_reason": d.hold_reason,
            "fraud_score": d.fraud_score, "waited_s": d.waited_s}


def review_detail(session: Session, settings: Settings, ref: str,
                  store: str | None = None) -> dict[str, Any] | None:
    """One order as the reviewer sees it (by the store's order id or the internal id)."""
    row = find_order(session, ref, store)
    if row is None:
        return None
    now = utcnow()
    out = _summary(row, now, settings.review_overdue_s)
    payload = row.payload
    profile = session.get(CustomerProfile, (row.store, row.customer_id))
    lines = session.execute(select(OrderLine).where(OrderLine.order_id == row.id)
                            .order_by(OrderLine.line_no)).scalars()
    decisions = session.execute(select(ReviewDecision).where(ReviewDecision.order_id == row.id)
                                .order_by(ReviewDecision.id)).scalars()
    events = session.execute(select(OrderEvent).where(OrderEvent.order_id == row.id)
                             .order_by(OrderEvent.id)).scalars()
    out.update({
        "customer": {**payload.get("customer", {}), "id": row.customer_id},
        "history": None if profile is None else {
            "accepted_orders": profile.orders, "total_usd": str(profile.total_usd),
            "largest_usd": str(profile.max_usd),
            "first_order_at": profile.first_order_at.isoformat(),
            "last_order_at": profile.last_order_at.isoformat()},
        "shipping_address": payload.get("shipping_address"),
        "billing_address": payload.get("billing_address"),
        "payment": payload.get("payment"),
        "client": payload.get("client"),
        "lines": [{"sku": ln.sku, "quantity": ln.quantity, "unit_price": str(ln.unit_price)}
                  for ln in lines],
        "decisions": [_decision_json(d) for d in decisions],
        "events": [{"at": e.at.isoformat(), "stage": e.stage, "from_state": e.from_state,
                    "to_state": e.to_state, "detail": e.detail} for e in events],
    })
    return out


def recent_decisions(session: Session, *, limit: int = 100) -> list[dict[str, Any]]:
    """The desk's latest decisions, newest first."""
    rows = session.execute(
        select(ReviewDecision, OrderRow.store, OrderRow.source_order_id)
        .join(OrderRow, OrderRow.id == ReviewDecision.order_id)
        .order_by(ReviewDecision.id.desc()).limit(limit)).all()
    return [{"order_id": d.order_id, "store": store, "source_order_id": source_id,
             **_decision_json(d)} for d, store, source_id in rows]


def _clean(field: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidDecision(field, "is required (who decided, and why)")
    text = value.strip()
    if len(text) > limit:
        raise InvalidDecision(field, f"must be at most {limit} characters")
    return text


def _decide(uow: UnitOfWork, ref: str, decision: str, by: Any, reason: Any,
            store: str | None) -> tuple[OrderRow, Decision]:
    if decision not in DECISIONS:
        raise InvalidDecision("decision", f"must be one of {DECISIONS}")
    by = _clean("by", by, 255)
    reason = _clean("reason", reason, MAX_REASON)
    session = uow.session
    row = find_order(session, ref, store)
    if row is None:
        raise OrderNotFound(ref)
    # Lock the row and re-read it: of two reviewers deciding at once, the second finds the
    # order no longer on hold (an approved order could otherwise still be "cancelled").
    session.refresh(row, with_for_update=True)
    if row.state != State.ON_HOLD.value:
        raise NotOnHold(row.id, row.state)
    now = utcnow()
    waited = _waiting_s(row, now)
    hold_reason, score = row.hold_reason, row.fraud_score
    # Held at intake, before the fraud check: approval sends it to the fraud check, not past it.
    dst = State.CANCELLED if decision != "approve" else \
        State.RECEIVED if held_at_intake(row) else State.FRAUD_CHECKED
    try:
        transition(session, row.id, dst, stage="review",
                   detail={"decision": decision, "by": by, "reason": reason[:500]})
    except IllegalTransition as exc:  # pragma: no cover - the lock above makes this unreachable
        raise NotOnHold(row.id, exc.src) from None
    session.add(ReviewDecision(order_id=row.id, decision=decision, decided_by=by, reason=reason,
                               decided_at=now, hold_reason=hold_reason, fraud_score=score,
                               waited_s=waited))
    resolve_alert(session, ALERT_KIND, str(row.id))
    return row, Decision(row.id, decision, by, reason, now, dst.value, waited)


def held_at_intake(row: OrderRow) -> bool:
    """Held at the door (totals, test order, payment status), not by the fraud check."""
    return row.fraud_score is None and (row.hold_reason or "").startswith("intake:")


def correct_address(uow: UnitOfWork, ref: str, address: Any, *, by: Any,
                    store: str | None = None) -> dict[str, Any]:
    """Replace the shipping address of an order not yet reserved (a person's correction)."""
    by = _clean("by", by, 255)
    try:
        clean = Address.model_validate(address)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidDecision("address." + ".".join(str(p) for p in first["loc"]),
                              first["msg"]) from None
    session = uow.session
    row = find_order(session, ref, store)
    if row is None:
        raise OrderNotFound(ref)
    session.refresh(row, with_for_update=True)
    if State(row.state) not in EDITABLE:
        raise NotOnHold(row.id, row.state)
    new = clean.model_dump(mode="json")
    row.payload = {**row.payload, "shipping_address": new}
    row.ship_country = clean.country
    row.updated_at = utcnow()
    session.add(OrderEvent(order_id=row.id, at=row.updated_at, stage="review",
                           from_state=row.state, to_state=row.state,
                           detail={"corrected": "shipping_address", "by": by}))
    log.info("review: order %s shipping address corrected", row.id)
    return {"order_id": row.id, "state": row.state, "shipping_address": new}


def approve_order(uow: UnitOfWork, ref: str, *, by: Any, reason: Any,
                  store: str | None = None) -> Decision:
    """Approve a held order: it goes on to reservation once this transaction commits (or to
    the fraud check, when it was held at intake before one)."""
    row, decision = _decide(uow, ref, "approve", by, reason, store)
    if decision.to_state == State.RECEIVED.value:
        advance(uow, State.RECEIVED, [row.id])
        log.info("review: order %s approved at intake after %ss", row.id, decision.waited_s)
        return decision
    payload = row.payload
    pay = payload.get("payment") or {}
    record_accepted(uow.session, [Accepted(
        row.store, row.customer_id, Decimal(row.total_usd), row.paid_at,
        address_key(Address.model_validate(payload["shipping_address"])),
        card_key(str(pay.get("card_bin", "")), str(pay.get("card_last4", ""))),
        ip_country(str((payload.get("client") or {}).get("browser_ip", ""))) or "")])
    order_id = row.id
    advance(uow, State.FRAUD_CHECKED, [order_id])
    log.info("review: order %s approved after %ss", order_id, decision.waited_s)
    return decision


def cancel_order(uow: UnitOfWork, ref: str, *, by: Any, reason: Any,
                 store: str | None = None) -> Decision:
    """Cancel a held order and release any stock it holds."""
    row, decision = _decide(uow, ref, "cancel", by, reason, store)
    released = release_reservations(uow, [row.id], "cancelled at review")
    log.info("review: order %s cancelled after %ss", row.id, decision.waited_s)
    return replace(decision, released_units=released)


def raise_overdue_alerts(uow: UnitOfWork, settings: Settings) -> list[int]:
    """Alert on orders waiting past the deadline; close alerts of orders no longer waiting.

    Returns the ids newly alerted (an alert stays open, and is raised once, until resolved).
    """
    session = uow.session
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.review_overdue_s)
    overdue = session.execute(
        select(OrderRow).where(OrderRow.state == State.ON_HOLD.value,
                               OrderRow.updated_at < cutoff)
        .order_by(OrderRow.updated_at).limit(MAX_OVERDUE_PER_SWEEP)).scalars().all()
    raised = []
    for row in overdue:
        minutes = _waiting_s(row, now) // 60
        if raise_alert(session, ALERT_KIND, str(row.id),
                       f"order {row.store}/{row.source_order_id} has waited {minutes} min for "
                       f"review: {row.hold_reason or 'held'}",
                       detail={"order_id": row.id, "held_since": row.updated_at.isoformat(),
                               "fraud_score": row.fraud_score}):
            raised.append(row.id)
    still = {str(r.id) for r in overdue}
    stale = [a.key for a in open_alerts(session, ALERT_KIND) if a.key not in still]
    if stale:
        waiting = {str(i) for i in session.execute(
            select(OrderRow.id).where(OrderRow.id.in_([int(k) for k in stale if k.isdigit()]),
                                      OrderRow.state == State.ON_HOLD.value)).scalars()}
        for key in stale:
            if key not in waiting:
                resolve_alert(session, ALERT_KIND, key)
    if raised:
        log.warning("review desk: %d orders overdue", len(raised))
    return raised
