"""Customer profile: this order against what the store knows of the customer.

The history is the customer's accepted orders (approved by the fraud stage or by a reviewer),
kept per store in ``fraud_customer_profiles`` (count, total, largest) and
``fraud_customer_keys`` (hashes of the shipping addresses and cards used). Rejected and
pending orders never enter it, so a fraudster cannot build a history by trying. The store's
own count (Shopify ``orders_count``) tells a returning customer we have not seen yet.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import iptocc
from disposable_email_domains import blocklist as DISPOSABLE_DOMAINS
from sqlalchemy import case, select
from sqlalchemy.orm import Session

from domain.db import any_row_of, dialect_insert, insert_from_arrays
from domain.fraud.address import fold
from domain.fraud.signals import Signal
from domain.models import (
    CustomerKey,
    CustomerProfile,
    customer_keys_table,
    customer_profiles_table,
)
from domain.schemas import Order

POINTS_NEW_CUSTOMER = 5
POINTS_FIRST_ORDER_HIGH = 10  # first order of FIRST_ORDER_HIGH_USD or more
POINTS_FIRST_ORDER_VERY_HIGH = 20
FIRST_ORDER_HIGH_USD = Decimal("200")
FIRST_ORDER_VERY_HIGH_USD = Decimal("350")
POINTS_NEW_ADDRESS = 10
POINTS_NEW_CARD = 5
POINTS_VALUE_SPIKE = 15
VALUE_SPIKE_FACTOR = Decimal("3")  # times the customer's average order
VALUE_SPIKE_MIN_USD = Decimal("150")
POINTS_KNOWN_ADDRESS = -10
POINTS_KNOWN_CARD = -5
POINTS_STORE_RETURNING = -5  # the store counts 3+ orders and we have no history yet
POINTS_DISPOSABLE_EMAIL = 25
POINTS_EMAIL_NOT_NAME = 5  # a new customer whose e-mail resembles neither name on the order
POINTS_RANDOM_EMAIL = 10  # ... and looks machine-made (digits inside letters, hardly a vowel)
POINTS_AWAY_FROM_BILLING = 10  # a new customer's parcel going elsewhere than the card's address
POINTS_IP_COUNTRY = 10  # the IP is not in the cardholder's (billing) country
POINTS_IP_COUNTRY_NEITHER = 10  # on top: the parcel goes abroad and the IP is in a third country
POINTS_NEW_IP_COUNTRY = 10  # a known customer ordering from a country never seen for them
# A known account suddenly shipping somewhere new from a new place, or for far more than usual:
# the shape of an account takeover.
POINTS_TAKEOVER_SHAPE = 10
POINTS_BULK_LINE = 10


@dataclass(frozen=True, slots=True)
class History:
    orders: int
    total_usd: Decimal
    max_usd: Decimal
    addresses: frozenset[str] = field(default_factory=frozenset)
    cards: frozenset[str] = field(default_factory=frozenset)
    ip_countries: frozenset[str] = field(default_factory=frozenset)

    @property
    def average_usd(self) -> Decimal:
        return self.total_usd / self.orders if self.orders else Decimal("0")


def card_key(card_bin: str, card_last4: str) -> str:
    """A hash of the card as the order shows it (BIN and last four), or "" without one."""
    card_bin, card_last4 = card_bin.strip(), card_last4.strip()
    if not (card_bin.isdigit() and len(card_last4) == 4 and card_last4.isdigit()):
        return ""
    return hashlib.blake2b(f"{card_bin}:{card_last4}".encode(), digest_size=12).hexdigest()


def is_disposable(email: str) -> bool:
    domain = email.rpartition("@")[2].strip().lower()
    if not domain:
        return False
    # Disposable services hand out subdomains too (x.mailinator.com).
    parts = domain.split(".")
    return any(".".join(parts[i:]) in DISPOSABLE_DOMAINS for i in range(len(parts) - 1))


def ip_country(ip: str) -> str | None:
    """The country the IP block is registered to (RIR data bundled with ``iptocc``)."""
    if not ip:
        return None
    return iptocc.country_code(ip.strip())


def load_histories(session: Session,
                   customers: Iterable[tuple[str, str]]) -> dict[tuple[str, str], History]:
    """The histories of these (store, customer id) pairs, in two queries."""
    pairs = sorted(set(customers))
    if not pairs:
        return {}
    profiles = session.execute(
        select(CustomerProfile).where(
            any_row_of(session, (CustomerProfile.store, CustomerProfile.customer_id), pairs))
    ).scalars().all()
    if not profiles:
        return {}
    keys: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(
        lambda: {"address": set(), "card": set(), "ip_country": set()})
    known = [(p.store, p.customer_id) for p in profiles]
    for store, customer_id, kind, key in session.execute(
        select(CustomerKey.store, CustomerKey.customer_id, CustomerKey.kind, CustomerKey.key)
        .where(any_row_of(session, (CustomerKey.store, CustomerKey.customer_id), known))
    ):
        keys[(store, customer_id)].setdefault(kind, set()).add(key)
    out = {}
    for p in profiles:
        k = keys[(p.store, p.customer_id)]
        out[(p.store, p.customer_id)] = History(
            p.orders, Decimal(p.total_usd), Decimal(p.max_usd),
            frozenset(k["address"]), frozenset(k["card"]), frozenset(k["ip_country"]))
    return out


_NAME_PARTS = re.compile(r"[\s\-_.,/]+")


def email_resembles_name(email: str, names: Iterable[str]) -> bool | None:
    """Whether the e-mail's local part contains a part of a name on the order.

    None when it cannot tell: no e-mail, or no name in Latin script (an e-mail is written in
    Latin letters; a name in Chinese or Cyrillic script cannot be compared with it).
    """
    local = "".join(c for c in fold(email.partition("@")[0]) if "a" <= c <= "z")
    if not local:
        return None
    parts = [fold(part) for name in names if name and is_latin(name)
             for part in _NAME_PARTS.split(name)]
    parts = [p for p in parts if len(p) >= 3]
    if not parts:
        return None
    return any(p in local for p in parts)


_INNER_DIGITS = re.compile(r"[a-z][0-9]+[a-z]")


def looks_random(email: str) -> bool:
    """A local part like ``kx7qpl2m``: digits between letters, or hardly any vowel."""
    local = email.partition("@")[0].lower()
    letters = [c for c in local if "a" <= c <= "z"]
    if len(local) < 6 or not letters:
        return False
    vowels = sum(c in "aeiouy" for c in letters)
    return bool(_INNER_DIGITS.search(local)) or vowels / len(letters) < 0.2


def is_latin(text: str) -> bool:
    return all(ord(c) < 0x250 for c in text)


def profile_signals(order: Order, total_usd: Decimal, history: History | None, *,
                    addr_key: str, card: str, ip_country_code: str | None,
                    billing_key: str | None = None) -> list[Signal]:
    """New vs returning, address and card never used, value against history, e-mail, IP.

    ``billing_key`` is the billing address's ``address_key`` (None without one).
    """
    out: list[Signal] = []
    store_count = order.customer.order_count
    ship = order.shipping_address
    billing = order.billing_address or ship
    new = history is None and store_count <= 1
    if new:
        out.append(Signal("new_customer", POINTS_NEW_CUSTOMER, "new customer"))
        if billing_key is not None and billing_key != addr_key and billing.country == ship.country:
            out.append(Signal("away_from_billing", POINTS_AWAY_FROM_BILLING,
                              "first order ships away from the card's billing address"))
        if email_resembles_name(order.customer.email, (ship.name, billing.name)) is False:
            out.append(Signal("email_not_name", POINTS_EMAIL_NOT_NAME,
                              "e-mail resembles no name on the order"))
            if looks_random(order.customer.email):
                out.append(Signal("random_email", POINTS_RANDOM_EMAIL,
                                  "e-mail looks machine-generated"))
        if total_usd >= FIRST_ORDER_VERY_HIGH_USD:
            out.append(Signal("high_value_first_order", POINTS_FIRST_ORDER_VERY_HIGH,
                              f"first order worth {total_usd:.0f} USD"))
        elif total_usd >= FIRST_ORDER_HIGH_USD:
            out.append(Signal("high_value_first_order", POINTS_FIRST_ORDER_HIGH,
                              f"first order worth {total_usd:.0f} USD"))
    elif history is None:
        if store_count >= 3:
            out.append(Signal("store_returning", POINTS_STORE_RETURNING,
                              f"returning customer per the store ({store_count} orders)"))
    else:
        if addr_key in history.addresses:
            out.append(Signal("known_address", POINTS_KNOWN_ADDRESS,
                              f"shipping address used on earlier orders ({history.orders})"))
        else:
            out.append(Signal("new_address", POINTS_NEW_ADDRESS,
                              "shipping address never used by this customer"))
        if card:
            if card in history.cards:
                out.append(Signal("known_card", POINTS_KNOWN_CARD,
                                  "card used on earlier orders"))
            elif history.cards:
                out.append(Signal("new_card", POINTS_NEW_CARD,
                                  "card never used by this customer"))
        if (ip_country_code and history.ip_countries
                and ip_country_code not in history.ip_countries):
            out.append(Signal("new_ip_country", POINTS_NEW_IP_COUNTRY,
                              f"ordering from {ip_country_code} for the first time"))
        average = history.average_usd
        spike = (total_usd >= VALUE_SPIKE_MIN_USD and total_usd > VALUE_SPIKE_FACTOR * average
                 and total_usd > history.max_usd)
        if spike:
            ratio = total_usd / average if average else Decimal("0")
            out.append(Signal("value_spike", POINTS_VALUE_SPIKE,
                              f"order value {ratio:.1f}x the customer's average"))
        new_place = bool(ip_country_code and history.ip_countries
                         and ip_country_code not in history.ip_countries)
        if addr_key not in history.addresses and (new_place or spike):
            out.append(Signal("takeover_shape", POINTS_TAKEOVER_SHAPE,
                              "known account shipping to a new address "
                              + ("from a new country" if new_place else "for far more than usual")))
            # A card on file is what a taken-over account pays with: no credit for it here.
            out = [s for s in out if s.code != "known_card"]
    if is_disposable(order.customer.email):
        out.append(Signal("disposable_email", POINTS_DISPOSABLE_EMAIL,
                          "disposable email domain"))
    # The cardholder's country is the billing country: a gift sent abroad from home is normal,
    # a card used from another country is not.
    if ip_country_code and ip_country_code != billing.country:
        out.append(Signal("ip_country", POINTS_IP_COUNTRY,
                          f"IP country {ip_country_code} differs from billing country "
                          f"{billing.country}"))
        if billing.country != ship.country and ip_country_code != ship.country:
            out.append(Signal("ip_country_neither", POINTS_IP_COUNTRY_NEITHER,
                              "IP country matches neither the billing nor the shipping country"))
    if any(line.quantity >= 20 for line in order.lines):
        out.append(Signal("bulk_line", POINTS_BULK_LINE, "unusual quantity on one line"))
    return out


@dataclass(frozen=True, slots=True)
class Accepted:
    """An order that joins its customer's history."""

    store: str
    customer_id: str
    total_usd: Decimal
    paid_at: datetime
    addr_key: str
    card: str
    ip_country: str = ""


def record_accepted(session: Session, accepted: Iterable[Accepted]) -> None:
    """Add accepted orders to their customers' histories (upsert; sorted, so no deadlocks).

    Called in the transaction that approves the orders, whose state guard makes it run once
    per order.
    """
    per_customer: dict[tuple[str, str], dict[str, Any]] = {}
    keys: set[tuple[str, str, str, str]] = set()
    first_used: dict[tuple[str, str, str, str], datetime] = {}
    for a in accepted:
        agg = per_customer.setdefault((a.store, a.customer_id), {
            "orders": 0, "total_usd": Decimal("0"), "max_usd": Decimal("0"),
            "first_order_at": a.paid_at, "last_order_at": a.paid_at})
        agg["orders"] += 1
        agg["total_usd"] += a.total_usd
        agg["max_usd"] = max(agg["max_usd"], a.total_usd)
        agg["first_order_at"] = min(agg["first_order_at"], a.paid_at)
        agg["last_order_at"] = max(agg["last_order_at"], a.paid_at)
        for kind, key in (("address", a.addr_key), ("card", a.card),
                          ("ip_country", a.ip_country)):
            if key:
                k = (a.store, a.customer_id, kind, key)
                keys.add(k)
                first_used[k] = min(first_used.get(k, a.paid_at), a.paid_at)
    if not per_customer:
        return
    rows = [{"store": s, "customer_id": c, **agg}
            for (s, c), agg in sorted(per_customer.items())]
    t = customer_profiles_table.c
    stmt = dialect_insert(session, customer_profiles_table)
    new = stmt.excluded
    upsert = {
        "orders": t.orders + new.orders,
        "total_usd": t.total_usd + new.total_usd,
        "max_usd": case((new.max_usd > t.max_usd, new.max_usd), else_=t.max_usd),
        "first_order_at": case((new.first_order_at < t.first_order_at, new.first_order_at),
                               else_=t.first_order_at),
        "last_order_at": case((new.last_order_at > t.last_order_at, new.last_order_at),
                              else_=t.last_order_at),
    }
    key_rows = [{"store": s, "customer_id": c, "kind": kind, "key": key,
                 "first_used_at": first_used[(s, c, kind, key)]}
                for s, c, kind, key in sorted(keys)]
    conn = session.connection()
    if session.get_bind().dialect.name == "postgresql":
        # One INSERT ... SELECT over arrays each (rows are unique per conflict key, as ON
        # CONFLICT DO UPDATE requires); an executemany was a statement per customer and key.
        conn.execute(insert_from_arrays(customer_profiles_table, rows).on_conflict_do_update(
            index_elements=["store", "customer_id"], set_=upsert))
        if key_rows:
            conn.execute(insert_from_arrays(customer_keys_table, key_rows).on_conflict_do_nothing(
                index_elements=["store", "customer_id", "kind", "key"]))
        return
    # Core statements run as one executemany: a multi-row VALUES would be compiled afresh for
    # every batch (the stage's largest CPU cost when measured).
    conn.execute(stmt.on_conflict_do_update(index_elements=["store", "customer_id"],
                                            set_=upsert), rows)
    if key_rows:
        conn.execute(dialect_insert(session, customer_keys_table).on_conflict_do_nothing(
            index_elements=["store", "customer_id", "kind", "key"]), key_rows)
