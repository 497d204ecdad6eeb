"""Fraud scoring on plain orders: reasons explain the score; value over $500 goes to review."""

from decimal import Decimal
from typing import Any

from config.settings import Settings
from domain.fraud import Context
from domain.fraud.profile import History
from domain.lifecycle import State
from domain.schemas import Order, parse_order
from tasks.fraud import score_order
from tasks.intake import to_usd

SETTINGS = Settings()
ADDRESS = {"name": "Jo Miller", "line1": "1 Main St", "city": "Austin", "region": "TX",
           "postal_code": "78701", "country": "US", "phone": "+1 512-555-0142"}


def order(**over: Any) -> Order:
    data: dict[str, Any] = {
        "order_id": "1", "store": "s", "paid_at": "2026-11-27T10:00:00Z",
        "customer": {"id": "c", "email": "jo.miller@example.com", "order_count": 3},
        "lines": [{"sku": "A", "quantity": 1, "unit_price": "80.00"}],
        "currency": "USD", "totals": {"subtotal": "80.00", "total": "80.00"},
        "shipping_address": ADDRESS, "billing_address": ADDRESS,
        "payment": {"avs_result": "Y", "cvv_result": "M", "card_bin": "414720",
                    "card_last4": "4242"},
    }
    data.update(over)
    return parse_order(data)


def verdict(o: Order, settings: Settings = SETTINGS, ctx: Context | None = None):
    return score_order(o, to_usd(o.totals.total, o.currency, settings), settings, ctx)


def text(reasons: tuple[str, ...]) -> list[str]:
    """The reasons without their weights."""
    return [r.rsplit(" (", 1)[0] for r in reasons]


def test_clean_returning_customer_is_approved() -> None:
    v = verdict(order())
    assert v.decision == State.FRAUD_CHECKED
    # The store's count of earlier orders is the only evidence, and it speaks for the customer.
    assert v.score == 0 and text(v.reasons) == ["returning customer per the store (3 orders)"]


def test_card_testing_signals_are_rejected_with_reasons() -> None:
    v = verdict(order(payment={"avs_result": "N", "cvv_result": "N", "attempts": 4},
                      billing_address={"line1": "x", "city": "Lagos", "country": "NG"},
                      customer={"id": "c", "email": "x@mailinator.com", "order_count": 0}))
    assert v.decision == State.REJECTED
    assert v.score >= SETTINGS.fraud_reject_score
    reasons = text(v.reasons)
    assert "CVV no match" in reasons
    assert "disposable email domain" in reasons
    assert "billing country differs from shipping country" in reasons
    assert "4 payment attempts" in reasons


def test_each_reason_carries_its_weight_and_the_score_is_their_clamped_sum() -> None:
    v = verdict(order(payment={"avs_result": "N", "cvv_result": "P"}))
    weights = [int(r.rsplit("(", 1)[1].rstrip(")")) for r in v.reasons]
    assert v.score == max(0, min(100, sum(weights)))
    assert "AVS no match (N) (+25)" in v.reasons


def test_orders_over_500_usd_go_to_review_even_when_clean() -> None:
    v = verdict(order(lines=[{"sku": "A", "quantity": 1, "unit_price": "650.00"}],
                      totals={"subtotal": "650.00", "total": "650.00"}))
    assert v.decision == State.ON_HOLD and v.score < SETTINGS.fraud_review_score
    assert v.hold_reason and "over the 500 USD review line" in v.hold_reason


def test_review_line_is_converted_from_the_order_currency() -> None:
    # 480 GBP is about 610 USD at the configured rate: over the line.
    v = verdict(order(currency="GBP", lines=[{"sku": "A", "quantity": 1, "unit_price": "480.00"}],
                      totals={"subtotal": "480.00", "total": "480.00"}))
    assert v.decision == State.ON_HOLD
    # 480 USD stays under it.
    v = verdict(order(lines=[{"sku": "A", "quantity": 1, "unit_price": "480.00"}],
                      totals={"subtotal": "480.00", "total": "480.00"}))
    assert v.decision == State.FRAUD_CHECKED
    assert to_usd(Decimal("100"), "EUR", SETTINGS) == Decimal("108.00")


def test_review_line_and_thresholds_come_from_config() -> None:
    strict = Settings(review_threshold_usd=Decimal("50"), fraud_review_score=10,
                      fraud_reject_score=20)
    assert verdict(order(), strict).decision == State.ON_HOLD  # 80 USD is over a 50 USD line
    # AVS no match (+25) for a customer the store knows (-5): 20 points.
    risky = order(payment={"avs_result": "N", "cvv_result": "M"})
    assert verdict(risky).score == 20
    assert verdict(risky).decision == State.FRAUD_CHECKED
    assert verdict(risky, strict).decision == State.REJECTED


def test_medium_risk_goes_to_review() -> None:
    v = verdict(order(payment={"avs_result": "N", "cvv_result": "P"},
                      customer={"id": "c", "email": "jo.miller@example.com", "order_count": 1},
                      lines=[{"sku": "A", "quantity": 1, "unit_price": "300.00"}],
                      totals={"subtotal": "300.00", "total": "300.00"}))
    assert v.decision == State.ON_HOLD and 40 <= v.score < 75
    assert v.hold_reason == f"fraud score {v.score} needs review"


def test_a_po_box_the_carrier_cannot_deliver_is_held_without_adding_points() -> None:
    po_box = {**ADDRESS, "line1": "PO Box 1234"}
    o = order(shipping_address=po_box, billing_address=po_box)
    by_air = verdict(o, ctx=Context(carrier="sbx-air"))
    assert by_air.decision == State.ON_HOLD and by_air.score == 0
    assert "PO box: carrier sbx-air does not deliver to PO boxes (hold)" in by_air.reasons
    assert "PO box" in (by_air.hold_reason or "")
    assert verdict(o, ctx=Context(carrier="sbx-post")).decision == State.FRAUD_CHECKED


def test_history_turns_the_same_order_from_approved_to_review() -> None:
    o = order(lines=[{"sku": "A", "quantity": 1, "unit_price": "400.00"}],
              totals={"subtotal": "400.00", "total": "400.00"},
              client={"browser_ip": "5.255.255.5"})  # an IP registered in Russia
    known = History(orders=4, total_usd=Decimal("200"), max_usd=Decimal("60"),
                    addresses=frozenset({"elsewhere"}), cards=frozenset(),
                    ip_countries=frozenset({"US"}))
    v = verdict(o, ctx=Context(history=known))
    reasons = text(v.reasons)
    assert "shipping address never used by this customer" in reasons
    assert "order value 8.0x the customer's average" in reasons
    assert "ordering from RU for the first time" in reasons
    assert v.decision == State.ON_HOLD
