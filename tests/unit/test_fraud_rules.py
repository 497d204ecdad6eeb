"""Fraud scoring on plain orders: reasons explain the score; value over $500 goes to review."""

from decimal import Decimal

from config.settings import Settings
from domain.lifecycle import State
from domain.schemas import parse_order
from tasks.fraud import score_order
from tasks.intake import to_usd

SETTINGS = Settings()


def order(**over: object):  # type: ignore[no-untyped-def]
    data = {
        "order_id": "1", "store": "s", "paid_at": "2026-11-27T10:00:00Z",
        "customer": {"id": "c", "email": "jo@example.com", "order_count": 3},
        "lines": [{"sku": "A", "quantity": 1, "unit_price": "80.00"}],
        "currency": "USD", "totals": {"subtotal": "80.00", "total": "80.00"},
        "shipping_address": {"line1": "1 St", "city": "Austin", "country": "US"},
        "billing_address": {"line1": "1 St", "city": "Austin", "country": "US"},
        "payment": {"avs_result": "Y", "cvv_result": "M"},
    }
    data.update(over)
    return parse_order(data)


def verdict(o):  # type: ignore[no-untyped-def]
    return score_order(o, to_usd(o.totals.total, o.currency, SETTINGS), SETTINGS)


def test_clean_returning_customer_is_approved() -> None:
    v = verdict(order())
    assert v.decision == State.FRAUD_CHECKED and v.score == 0 and v.reasons == ()


def test_card_testing_signals_are_rejected_with_reasons() -> None:
    v = verdict(order(payment={"avs_result": "N", "cvv_result": "N", "attempts": 4},
                      billing_address={"line1": "x", "city": "Lagos", "country": "NG"},
                      customer={"id": "c", "email": "x@mailinator.com", "order_count": 0}))
    assert v.decision == State.REJECTED
    assert v.score >= SETTINGS.fraud_reject_score
    assert "CVV no match" in v.reasons
    assert "disposable email domain" in v.reasons
    assert "billing country differs from shipping country" in v.reasons


def test_orders_over_500_usd_go_to_review_even_when_clean() -> None:
    v = verdict(order(lines=[{"sku": "A", "quantity": 1, "unit_price": "650.00"}],
                      totals={"subtotal": "650.00", "total": "650.00"}))
    assert v.decision == State.ON_HOLD
    assert v.hold_reason and "review" in v.hold_reason


def test_review_line_is_converted_from_the_order_currency() -> None:
    # 480 GBP is about 610 USD at the configured rate: over the line.
    v = verdict(order(currency="GBP", lines=[{"sku": "A", "quantity": 1, "unit_price": "480.00"}],
                      totals={"subtotal": "480.00", "total": "480.00"}))
    assert v.decision == State.ON_HOLD
    # 480 USD stays under it.
    v = verdict(order(lines=[{"sku": "A", "quantity": 1, "unit_price": "480.00"}],
                      totals={"subtotal": "480.00", "total": "480.00"}))
    assert v.decision == State.FRAUD_CHECKED


def test_medium_risk_goes_to_review() -> None:
    v = verdict(order(payment={"avs_result": "N", "cvv_result": "P"},
                      customer={"id": "c", "email": "jo@example.com", "order_count": 1},
                      lines=[{"sku": "A", "quantity": 1, "unit_price": "300.00"}],
                      totals={"subtotal": "300.00", "total": "300.00"}))
    assert v.decision == State.ON_HOLD and 40 <= v.score < 75
    assert to_usd(Decimal("100"), "EUR", SETTINGS) == Decimal("108.00")
