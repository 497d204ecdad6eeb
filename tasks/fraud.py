"""Fraud check: a rule-based score with the reasons that produced it.

First cut of the triple check: address (billing vs shipping country), payment behaviour (AVS,
CVV, payment attempts) and customer profile (new customer, disposable email, order value).
Orders above the review threshold (USD equivalent, default $500) always go to a person.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

from disposable_email_domains import blocklist as DISPOSABLE_DOMAINS
from sqlalchemy import update

from config.settings import Settings, get_settings
from domain.db import UnitOfWork, unit_of_work
from domain.lifecycle import Move, State, apply_transitions, claim
from domain.models import OrderRow
from domain.schemas import Order
from tasks.base import TRANSIENT_ERRORS, parse_ids, retry_backoff, stage_task

log = logging.getLogger(__name__)

# AVS result codes (Visa/Mastercard/Amex as reported by gateways and Shopify payment_details).
AVS_NO_MATCH = frozenset({"N", "C"})
AVS_PARTIAL = frozenset({"A", "B", "P", "W", "Z"})
CVV_NO_MATCH = frozenset({"N"})
CVV_UNVERIFIED = frozenset({"P", "S", "U"})


@dataclass(frozen=True)
class Verdict:
    score: int
    reasons: tuple[str, ...]
    decision: State  # FRAUD_CHECKED (approve), ON_HOLD (review) or REJECTED
    hold_reason: str | None = None


def score_order(order: Order, total_usd: Decimal, settings: Settings) -> Verdict:
    """Score 0-100 from independent signals; each signal adds points and a reason."""
    points: list[tuple[int, str]] = []
    pay = order.payment
    avs, cvv = pay.avs_result.upper(), pay.cvv_result.upper()
    if avs in AVS_NO_MATCH:
        points.append((30, f"AVS no match ({avs})"))
    elif avs in AVS_PARTIAL:
        points.append((10, f"AVS partial match ({avs})"))
    if cvv in CVV_NO_MATCH:
        points.append((35, "CVV no match"))
    elif cvv in CVV_UNVERIFIED:
        points.append((5, f"CVV not verified ({cvv})"))
    if pay.attempts >= 3:
        points.append((min(10 * (pay.attempts - 2), 30), f"{pay.attempts} payment attempts"))

    billing = order.billing_address
    if billing is not None and billing.country != order.shipping_address.country:
        points.append((20, "billing country differs from shipping country"))

    domain = order.customer.email.rpartition("@")[2].lower()
    if domain and domain in DISPOSABLE_DOMAINS:
        points.append((25, "disposable email domain"))
    new_customer = order.customer.order_count <= 1
    if new_customer and total_usd >= Decimal("250"):
        points.append((15, "new customer with a high-value first order"))
    if any(line.quantity >= 20 for line in order.lines):
        points.append((10, "unusual quantity on one line"))

    score = min(sum(p for p, _ in points), 100)
    reasons = tuple(r for _, r in points)
    if score >= settings.fraud_reject_score:
        return Verdict(score, reasons, State.REJECTED)
    if total_usd > settings.review_threshold_usd:
        line = settings.review_threshold_usd
        hold = f"order value {total_usd} USD is over the {line} USD review line"
        return Verdict(score, reasons, State.ON_HOLD, hold)
    if score >= settings.fraud_review_score:
        return Verdict(score, reasons, State.ON_HOLD, f"fraud score {score} needs review")
    return Verdict(score, reasons, State.FRAUD_CHECKED)


def check_orders(uow: UnitOfWork, order_ids: list[int], settings: Settings) -> list[int]:
    """Score the received orders among ``order_ids``; return the ids approved."""
    session = uow.session
    orders = claim(session, order_ids, [State.RECEIVED])
    moves, updates = [], []
    for row in orders:
        verdict = score_order(Order.model_validate(row.payload), row.total_usd, settings)
        updates.append({"id": row.id, "fraud_score": verdict.score,
                        "fraud_reasons": list(verdict.reasons), "hold_reason": verdict.hold_reason})
        detail = {"score": verdict.score, "reasons": list(verdict.reasons)}
        if verdict.hold_reason:
            detail["hold_reason"] = verdict.hold_reason
        moves.append(Move(row.id, State.RECEIVED, verdict.decision, detail))
    if updates:
        session.execute(update(OrderRow), updates)
    applied = apply_transitions(session, moves, stage="fraud")
    return [m.order_id for m in applied if m.dst == State.FRAUD_CHECKED]


@stage_task("orderfleet.fraud.check")
def check(self, order_ids: list[int]) -> None:  # type: ignore[no-untyped-def]
    from tasks.inventory import reserve

    settings = get_settings()
    ids = parse_ids(order_ids)
    try:
        with unit_of_work(settings) as uow:
            approved = check_orders(uow, ids, settings)
            if approved:
                uow.after_commit(lambda: reserve.delay(approved))
    except TRANSIENT_ERRORS as exc:
        retry_backoff(self, exc)
