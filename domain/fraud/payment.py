"""Payment behaviour of one order: AVS and CVV results and how many attempts the payment took.

AVS and CVV codes are the card networks' (Visa, Mastercard, Amex, Discover) as gateways report
them and Shopify passes on in ``payment_details``. AVS is widely supported only for cards issued
in the US, Canada and the UK: elsewhere "unavailable" is the normal answer, not a warning.
"""

from __future__ import annotations

from domain.fraud.signals import Signal
from domain.schemas import Order

AVS_FULL_MATCH = frozenset({"Y", "X", "D", "F", "M"})
AVS_NO_MATCH = frozenset({"N", "C"})
AVS_STREET_ONLY = frozenset({"A", "B"})  # street matches, postal code does not / not checked
AVS_POSTAL_ONLY = frozenset({"W", "Z", "P"})  # postal code matches, street does not
AVS_UNAVAILABLE = frozenset({"U", "S", "R", "G", "I", "E"})
AVS_COUNTRIES = frozenset({"US", "CA", "GB"})

CVV_NO_MATCH = frozenset({"N"})
CVV_NOT_PROCESSED = frozenset({"P"})
CVV_SHOULD_BE_PRESENT = frozenset({"S"})
CVV_UNVERIFIED = frozenset({"U", "X"})

POINTS_AVS_NO_MATCH = 25
POINTS_AVS_STREET_ONLY = 8
POINTS_AVS_POSTAL_ONLY = 5
POINTS_AVS_UNAVAILABLE = 5
POINTS_CVV_NO_MATCH = 35
POINTS_CVV_SHOULD_BE_PRESENT = 15
POINTS_CVV_NOT_PROCESSED = 5
POINTS_CVV_UNVERIFIED = 3
# Declined attempts before the one that went through: one retry is a typo, more is guessing.
POINTS_BY_ATTEMPTS = {1: 0, 2: 5, 3: 15, 4: 25}
POINTS_MANY_ATTEMPTS = 35  # 5 or more
# Retried payments whose AVS or CVV still fails: someone guessing a card's details.
POINTS_RETRIED_FAILING = 10


def payment_signals(order: Order) -> list[Signal]:
    """AVS, CVV and attempt signals of one order."""
    pay = order.payment
    out: list[Signal] = []
    avs, cvv = pay.avs_result.strip().upper(), pay.cvv_result.strip().upper()
    billing_country = (order.billing_address or order.shipping_address).country
    if avs in AVS_NO_MATCH:
        out.append(Signal("avs_no_match", POINTS_AVS_NO_MATCH, f"AVS no match ({avs})"))
    elif avs in AVS_STREET_ONLY:
        out.append(Signal("avs_partial", POINTS_AVS_STREET_ONLY,
                          f"AVS partial match: postal code differs ({avs})"))
    elif avs in AVS_POSTAL_ONLY:
        out.append(Signal("avs_partial", POINTS_AVS_POSTAL_ONLY,
                          f"AVS partial match: street differs ({avs})"))
    elif avs in AVS_UNAVAILABLE and billing_country in AVS_COUNTRIES:
        out.append(Signal("avs_unavailable", POINTS_AVS_UNAVAILABLE,
                          f"AVS unavailable for a {billing_country} billing address ({avs})"))
    if cvv in CVV_NO_MATCH:
        out.append(Signal("cvv_no_match", POINTS_CVV_NO_MATCH, "CVV no match"))
    elif cvv in CVV_SHOULD_BE_PRESENT:
        out.append(Signal("cvv_missing", POINTS_CVV_SHOULD_BE_PRESENT,
                          "CVV should be on the card but was not given (S)"))
    elif cvv in CVV_NOT_PROCESSED:
        out.append(Signal("cvv_unverified", POINTS_CVV_NOT_PROCESSED, "CVV not processed (P)"))
    elif cvv in CVV_UNVERIFIED:
        out.append(Signal("cvv_unverified", POINTS_CVV_UNVERIFIED, f"CVV not verified ({cvv})"))
    points = POINTS_BY_ATTEMPTS.get(pay.attempts, POINTS_MANY_ATTEMPTS)
    if points:
        out.append(Signal("payment_attempts", points, f"{pay.attempts} payment attempts"))
        failing = (avs in AVS_NO_MATCH or avs in AVS_STREET_ONLY or avs in AVS_POSTAL_ONLY
                   or cvv in CVV_NO_MATCH)
        if failing:
            out.append(Signal("retried_failing", POINTS_RETRIED_FAILING,
                              "payment retried while AVS/CVV kept failing"))
    return out
