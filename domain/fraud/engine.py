"""The triple check's verdict: address, payment behaviour and customer profile, one score.

Every signal adds (or, for a genuine customer's history, removes) points and names itself; the
score is their sum clamped to 0-100, and the configured thresholds turn it into approve, review
or reject. An order worth more than the review line always gets a person's look.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from config.settings import Settings
from domain.fraud.address import (
    address_key,
    billing_signals,
    check_address,
    check_phone,
    po_box_signals,
)
from domain.fraud.payment import payment_signals
from domain.fraud.profile import History, card_key, ip_country, profile_signals
from domain.fraud.signals import Signal
from domain.fraud.velocity import velocity_signals
from domain.lifecycle import State
from domain.schemas import Order


@dataclass(frozen=True, slots=True)
class Context:
    """What the stage knows beyond the order itself (empty for a pure, offline score)."""

    velocity: Mapping[str, int] = field(default_factory=dict)
    history: History | None = None
    carrier: str = ""  # the carrier that would deliver it; "" when not known
    # Hashes the stage has already computed for the velocity counters (None: compute here).
    addr_key: str | None = None
    card: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    score: int
    signals: tuple[Signal, ...]
    decision: State  # FRAUD_CHECKED (approve), ON_HOLD (review) or REJECTED
    hold_reason: str | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(s.reason() for s in self.signals)

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(s.code for s in self.signals)


def collect_signals(order: Order, total_usd: Decimal, settings: Settings,
                    ctx: Context) -> list[Signal]:
    """All three checks' signals for one order."""
    ship = order.shipping_address
    signals = check_address(ship)
    signals += check_phone(ship)
    signals += billing_signals(order)
    if ctx.carrier:
        signals += po_box_signals(ship, ctx.carrier, settings.fraud_po_box_refused_carriers)
    signals += payment_signals(order)
    signals += velocity_signals(ctx.velocity)
    billing = order.billing_address
    signals += profile_signals(
        order, total_usd, ctx.history,
        addr_key=ctx.addr_key if ctx.addr_key is not None else address_key(ship),
        card=ctx.card if ctx.card is not None else card_key(order.payment.card_bin,
                                                            order.payment.card_last4),
        ip_country_code=ip_country(order.client.browser_ip),
        billing_key=None if billing is None else address_key(billing))
    return signals


def decide(signals: list[Signal], total_usd: Decimal, settings: Settings) -> Verdict:
    """Score the signals and apply the thresholds and the review line."""
    score = max(0, min(100, sum(s.points for s in signals)))
    ordered = tuple(sorted(signals, key=lambda s: (not s.hold, -s.points)))
    if score >= settings.fraud_reject_score:
        return Verdict(score, ordered, State.REJECTED)
    holds = [s.text for s in ordered if s.hold]
    if score >= settings.fraud_review_score:
        holds.append(f"fraud score {score} needs review")
    if total_usd > settings.review_threshold_usd:
        holds.append(f"order value {total_usd} USD is over the "
                     f"{settings.review_threshold_usd} USD review line")
    if holds:
        return Verdict(score, ordered, State.ON_HOLD, "; ".join(holds))
    return Verdict(score, ordered, State.FRAUD_CHECKED)


def assess(order: Order, total_usd: Decimal, settings: Settings,
           ctx: Context | None = None) -> Verdict:
    """The verdict for one order."""
    return decide(collect_signals(order, total_usd, settings, ctx or Context()), total_usd,
                  settings)
