"""Labelled order streams for measuring the fraud check: genuine traffic plus known fraud patterns.

Deterministic for a seed (and a given ``start``). Every order is a native payload that intake
accepts, labelled with whether it is fraud and which pattern or genuine segment it belongs to.
The rules were tuned on seed 1; report accuracy on other seeds.

Genuine traffic (built on ``sandbox.synthetic``'s orders: real-looking carts, prices, taxes and
addresses in 20 countries, a share in Chinese, Japanese, Korean, Cyrillic or Arabic script) has
the noise real stores see, so a rule cannot simply key on one field:

* returning customers (the store's count says so; some order again within the stream) and new
  ones, orders up to and over the review line;
* AVS partial or unavailable answers, a few AVS mismatches, unverified CVVs, a retried payment;
* gifts shipped abroad (billing country differs) or within the country, travellers (IP abroad),
  PO boxes (some where only the post delivers), mobile carriers' shared IPs (several customers
  behind one address), moved customers and new cards, nickname e-mails that say nothing of the
  name, a few disposable e-mails, a few typo'd postal codes, people using a parcel forwarder.

Fraud patterns, each with its own mix of signals (not every order of a pattern shows each one):

* ``card_testing``: bursts of 6-30 small orders in minutes, many cards of one BIN, from one or two
  IPs (some bursts rotate proxies), new throw-away e-mails, AVS/CVV mostly failing, retries;
* ``mismatched_countries``: a stolen card from one country, a parcel to another, the IP in a
  third (or the parcel's) country;
* ``high_value_first_order``: a brand-new account's first order of 300-2,000 USD to a drop
  address away from the card's billing address, sometimes with complete card details (AVS Y);
* ``avs_cvv_failure``: a card number without its owner's details: AVS and/or CVV fail, several
  attempts;
* ``reshipper``: foreign cards and IPs shipping to parcel forwarders' warehouses (a few buildings,
  one suite code per "customer");
* ``account_takeover``: a known customer's account ordering far more than usual to a new address,
  often from abroad.
"""

from __future__ import annotations

import string
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from random import Random
from typing import Any

import iptocc

from sandbox.synthetic import CATALOGUE, generate_labelled_orders, to_usd

FRAUD_PATTERNS: tuple[str, ...] = (
    "card_testing",
    "mismatched_countries",
    "high_value_first_order",
    "avs_cvv_failure",
    "reshipper",
    "account_takeover",
)
# Share of the fraud orders per pattern.
PATTERN_SHARE: dict[str, float] = {
    "card_testing": 0.30,
    "mismatched_countries": 0.15,
    "high_value_first_order": 0.15,
    "avs_cvv_failure": 0.15,
    "reshipper": 0.15,
    "account_takeover": 0.10,
}
LEGIT_SEGMENTS: tuple[str, ...] = (
    "legit_returning",
    "legit_new",
    "legit_non_latin",
    "legit_gift_abroad",
    "legit_gift_domestic",
    "legit_traveller",
    "legit_po_box",
    "legit_forwarder_user",
    "legit_moved",
)

# Countries fraud IPs and stolen cards come from, besides the store's usual ones.
_FRAUD_ORIGINS = ("NG", "VN", "ID", "UA", "RO", "PK", "BR", "RU", "CN", "IN", "US", "GB")
_FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "hotmail.com", "gmx.de",
              "web.de", "mail.ru", "qq.com", "naver.com", "yahoo.co.jp")
_THROWAWAY = ("mailinator.com", "guerrillamail.com", "yopmail.com", "10minutemail.com",
              "trashmail.com", "sharklasers.com", "getnada.com")
# Popular issuer BINs: genuine cards cluster on a few banks, so BIN velocity has real noise.
_POPULAR_BINS = tuple(f"{p}{n:02d}" for p in ("4147", "4266", "5425", "4000", "5178", "3782",
                                              "4532", "5555", "4916", "5105") for n in range(8))
# Parcel forwarders' receiving warehouses: (country, line1, city, region, postal code).
_FORWARDERS = (
    ("US", "1 Commerce Way", "New Castle", "DE", "19720"),
    ("US", "4350 NE Columbia Blvd", "Portland", "OR", "97218"),
    ("US", "8400 NW 25th St", "Doral", "FL", "33122"),
    ("US", "250 Moonachie Rd", "Moonachie", "NJ", "07074"),
    ("GB", "Unit 4 Heathrow Logistics Park", "Hounslow", "", "TW4 6ER"),
    ("DE", "Flughafenstraße 12", "Frankfurt am Main", "HE", "60549"),
)
_PO_BOX_LINES = {
    "US": "PO Box {n}", "CA": "PO Box {n}", "GB": "PO Box {n}", "AU": "PO Box {n}",
    "DE": "Postfach {n}", "FR": "BP {n}", "NL": "Postbus {n}", "ES": "Apartado {n}",
    "IT": "Casella Postale {n}", "SE": "Box {n}", "JP": "私書箱{n}号", "RU": "а/я {n}",
    "CN": "邮政信箱{n}号", "KR": "사서함 {n}", "AE": "ص.ب {n}", "BR": "Caixa Postal {n}",
    "MX": "Apartado {n}", "CH": "Postfach {n}", "NZ": "PO Box {n}", "SG": "PO Box {n}",
}


@dataclass(frozen=True)
class LabelledOrder:
    payload: dict[str, Any]
    fraud: bool
    pattern: str  # a FRAUD_PATTERNS entry, or a LEGIT_SEGMENTS entry for genuine orders


@dataclass
class _Customer:
    id: str
    email: str
    address: dict[str, Any]
    card: tuple[str, str]  # bin, last4
    country: str
    ip: str
    store_orders: int  # the store's count before the stream
    first_order_at: datetime
    orders_in_stream: int = 0
    spent_usd: list[Decimal] = field(default_factory=list)


@lru_cache(maxsize=1)
def _ip_pools() -> dict[str, list[str]]:
    """Public IPv4 addresses by registered country, found by sampling (fixed seed).

    The lookup is the one the fraud check uses (``iptocc``), so an address's country is what
    the check will see.
    """
    rng = Random(20261125)
    ips = [f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
           f"{rng.randint(1, 254)}" for _ in range(300_000)]
    pools: dict[str, list[str]] = defaultdict(list)
    for ip, cc in zip(ips, iptocc.country_code(ips), strict=True):
        if cc:
            pools[cc].append(ip)
    return dict(pools)


def _ip(rng: Random, country: str) -> str:
    pool = _ip_pools().get(country) or _ip_pools()["US"]
    return rng.choice(pool)


def _mobile_ip(rng: Random, country: str) -> str:
    # Mobile carriers put many subscribers behind a few addresses (carrier-grade NAT).
    pool = _ip_pools().get(country) or _ip_pools()["US"]
    return pool[rng.randrange(min(100, len(pool)))]


def _card(rng: Random, popular: bool = True) -> tuple[str, str]:
    card_bin = rng.choice(_POPULAR_BINS) if popular and rng.random() < 0.7 else (
        rng.choice("45") + "".join(rng.choices(string.digits, k=5)))
    return card_bin, "".join(rng.choices(string.digits, k=4))


def _gibberish(rng: Random) -> str:
    return "".join(rng.choices("abcdefghijkmnpqrstuvwxyz23456789", k=rng.randint(7, 11)))


def _usd(payload: dict[str, Any]) -> Decimal:
    return to_usd(payload["totals"]["total"], payload["currency"])


def _money(amount: Decimal, currency: str) -> str:
    return f"{amount:.0f}" if currency in ("JPY", "KRW") else f"{amount:.2f}"


def _small_cart(rng: Random) -> tuple[list[dict[str, Any]], Decimal]:
    cheap = [p for p in CATALOGUE if p.price <= 30]
    product = rng.choice(cheap)
    line = {"sku": product.sku, "title": product.title, "quantity": 1,
            "unit_price": f"{product.price:.2f}", "weight_g": product.weight_g, "properties": {}}
    return [line], product.price


def _with_cart(payload: dict[str, Any], lines: list[dict[str, Any]], subtotal: Decimal,
               currency: str) -> None:
    payload["lines"] = lines
    payload["currency"] = currency
    payload["totals"] = {"subtotal": _money(subtotal, currency), "shipping": "0",
                         "tax": "0", "discount": "0", "total": _money(subtotal, currency)}


def _is_latin(address: dict[str, Any]) -> bool:
    return all(ord(c) < 0x250 for c in f"{address.get('line1', '')}{address.get('city', '')}")


class _Builder:
    def __init__(self, n: int, seed: int, store: str, start: datetime, span: timedelta) -> None:
        self.rng = Random(seed * 7919 + 17)
        self.store, self.start, self.span = store, start, span
        # Base orders: real carts and addresses; ~8% over the review line.
        base = generate_labelled_orders(int(n * 1.6) + 200, seed=seed, store=store,
                                        invalid_rate=0.0, high_value_rate=0.08, risky_rate=0.0,
                                        shopify_rate=0.0, paid_at=start)
        self.bases = [p for _, p in base]
        self.next_base = 0
        # Other people's addresses (gift recipients, drops, cardholders): never a customer's home,
        # so no two unrelated people share one by accident.
        spare = generate_labelled_orders(n // 2 + 200, seed=seed + 10_000, store=store,
                                         invalid_rate=0.0, high_value_rate=0.0, risky_rate=0.0,
                                         shopify_rate=0.0, paid_at=start)
        self.by_country: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, p in spare:
            self.by_country[p["shipping_address"]["country"]].append(p["shipping_address"])
        self.next_spare: dict[str, int] = defaultdict(int)
        self.expensive = [p for p in self.bases if _usd(p) >= 300]
        self.seq = 0
        self.customers: list[_Customer] = []
        self.emails: set[str] = set()

    # -- helpers -----------------------------------------------------------------------------
    def base(self) -> dict[str, Any]:
        p = self.bases[self.next_base % len(self.bases)]
        self.next_base += 1
        out = {k: v for k, v in p.items()}
        out["customer"] = dict(p["customer"])
        out["shipping_address"] = dict(p["shipping_address"])
        out["billing_address"] = dict(p["billing_address"] or p["shipping_address"])
        out["payment"] = dict(p["payment"])
        out["client"] = dict(p["client"])
        return out

    def address_in(self, country: str) -> dict[str, Any]:
        """Someone else's address in ``country`` (each one handed out once, then reused)."""
        if country not in self.by_country:
            country = "US"
        pool = self.by_country[country]
        i = self.next_spare[country]
        self.next_spare[country] += 1
        return dict(pool[i % len(pool)])

    def when(self) -> datetime:
        return self.start + self.span * self.rng.random()

    def finish(self, p: dict[str, Any], at: datetime) -> dict[str, Any]:
        self.seq += 1
        p["order_id"] = f"{self.store}-{self.seq:06d}"
        p["store"] = self.store
        p["source"] = "native"
        p["paid_at"] = at.isoformat()
        p["tags"] = list(p.get("tags") or [])
        return p

    def new_customer(self, at: datetime, returning: bool) -> _Customer:
        rng = self.rng
        p = self.base()
        a = p["shipping_address"]
        local = p["customer"]["email"].split("@")[0]
        if rng.random() < 0.15:  # a nickname address that says nothing of the name
            local = rng.choice(("sunny", "blue", "happy", "coffee", "night", "wolf", "star",
                                "pixel", "green", "lucky")) + rng.choice(
                ("fox", "bird", "lover", "cat", "rider", "girl", "guy", "bee")) + str(
                rng.randint(1, 999))
        domain = rng.choice(_FREE_MAIL[:5]) if rng.random() < 0.8 else "example.org"
        while f"{local}@{domain}" in self.emails:  # one mailbox, one person
            local += str(rng.randint(0, 9))
        self.emails.add(f"{local}@{domain}")
        first = at - (timedelta(days=rng.randint(20, 1500)) if returning
                      else timedelta(seconds=rng.randint(30, 900)))
        c = _Customer(
            id=f"cus_{rng.randrange(10**10):010d}", email=f"{local}@{domain}", address=a,
            card=_card(rng), country=a["country"],
            ip=_mobile_ip(rng, a["country"]) if rng.random() < 0.3 else _ip(rng, a["country"]),
            store_orders=rng.randint(1, 12) if returning else 0, first_order_at=first)
        self.customers.append(c)
        return c

    def order_for(self, c: _Customer, at: datetime) -> dict[str, Any]:
        """A genuine order of customer ``c``: their address, card, IP; a new cart."""
        rng = self.rng
        p = self.base()
        p["customer"] = {"id": c.id, "email": c.email,
                         "first_order_at": c.first_order_at.isoformat(),
                         "order_count": c.store_orders + c.orders_in_stream + 1, "tags": []}
        p["shipping_address"] = dict(c.address)
        p["billing_address"] = dict(c.address) if rng.random() < 0.8 else None
        avs = rng.choices(("Y", "A", "Z", "W", "U", "N"), (84, 5, 4, 2, 4, 1))[0]
        cvv = rng.choices(("M", "P", "U", "N"), (96.5, 1.5, 1.7, 0.3))[0]
        attempts = rng.choices((1, 2, 3), (92, 7, 1))[0]
        p["payment"] = {"gateway": rng.choice(("shopify_payments", "stripe")), "avs_result": avs,
                        "cvv_result": cvv, "card_bin": c.card[0], "card_last4": c.card[1],
                        "attempts": attempts}
        if rng.random() < 0.15:  # PayPal and wallets: no card details reach the store
            p["payment"] = {"gateway": "paypal", "avs_result": "", "cvv_result": "",
                            "card_bin": "", "card_last4": "", "attempts": 1}
        p["client"] = {"browser_ip": c.ip if rng.random() < 0.8 else _ip(rng, c.country),
                       "user_agent": p["client"].get("user_agent", "")}
        if rng.random() < 0.003:
            p["customer"]["email"] = f"{c.email.split('@')[0]}@{rng.choice(_THROWAWAY)}"
        c.orders_in_stream += 1
        c.spent_usd.append(_usd(p))
        return p

    # -- genuine traffic -----------------------------------------------------------------------
    def legit(self, at: datetime) -> LabelledOrder:
        rng = self.rng
        segment = ""
        if self.customers and rng.random() < 0.25:
            c = rng.choice(self.customers)
            segment = "legit_returning"
        else:
            returning = rng.random() < 0.45
            c = self.new_customer(at, returning)
            segment = "legit_returning" if returning else "legit_new"
        p = self.order_for(c, at)
        r = rng.random()
        if r < 0.03:  # a gift sent abroad: billing at home, parcel to another country
            segment = "legit_gift_abroad"
            p["billing_address"] = dict(c.address)
            p["shipping_address"] = self.address_in(
                rng.choice([k for k in self.by_country if k != c.country]))
        elif r < 0.07:  # a gift to someone else in the same country
            segment = "legit_gift_domestic"
            p["billing_address"] = dict(c.address)
            p["shipping_address"] = self.address_in(c.country)
        elif r < 0.09:  # travelling: ordering from abroad, parcel home
            segment = "legit_traveller"
            p["client"]["browser_ip"] = _ip(rng, rng.choice(("US", "FR", "ES", "IT", "GB", "TH",
                                                             "MX", "JP", "DE")))
        elif r < 0.10:  # a PO box (only the post delivers to one)
            segment = "legit_po_box"
            p["shipping_address"]["line1"] = _PO_BOX_LINES.get(
                c.country, "PO Box {n}").format(n=rng.randint(10, 9999))
            p["shipping_address"]["line2"] = ""
        elif r < 0.104:  # living abroad, shopping through a parcel forwarder
            segment = "legit_forwarder_user"
            country, line1, city, region, postal = rng.choice(_FORWARDERS)
            p["shipping_address"] = {**p["shipping_address"], "line1": line1,
                                     "line2": f"Suite {rng.randint(1000, 99999)}", "city": city,
                                     "region": region, "postal_code": postal,
                                     "country": country}
        elif r < 0.12 and segment == "legit_returning" and c.orders_in_stream > 1:
            segment = "legit_moved"  # moved house (and a new card)
            c.address = self.address_in(c.country)
            c.card = _card(rng)
            p["shipping_address"] = dict(c.address)
            p["billing_address"] = dict(c.address)
            if p["payment"]["card_bin"]:
                p["payment"]["card_bin"], p["payment"]["card_last4"] = c.card
        elif r < 0.13:  # a typo in the postal code
            postal = p["shipping_address"].get("postal_code") or ""
            if postal:
                p["shipping_address"]["postal_code"] = postal[:-1] or "0"
        if segment in ("legit_returning", "legit_new") and not _is_latin(p["shipping_address"]):
            segment = "legit_non_latin"
        return LabelledOrder(self.finish(p, at), False, segment)

    # -- fraud -----------------------------------------------------------------------------------
    def fraudster(self, p: dict[str, Any], at: datetime, *, disposable: float = 0.15) -> None:
        rng = self.rng
        domain = rng.choice(_THROWAWAY) if rng.random() < disposable else rng.choice(_FREE_MAIL)
        p["customer"] = {"id": f"cus_{rng.randrange(10**10):010d}",
                         "email": f"{_gibberish(rng)}@{domain}",
                         "first_order_at": (at - timedelta(seconds=rng.randint(20, 600)))
                         .isoformat(), "order_count": 1, "tags": []}

    def card_testing(self, budget: int) -> list[LabelledOrder]:
        rng = self.rng
        size = min(budget, rng.randint(6, 30))
        at0 = self.when()
        minutes = rng.uniform(2, 15)
        origin = rng.choice(_FRAUD_ORIGINS)
        ips = [_ip(rng, origin) for _ in range(rng.choice((1, 1, 2)))]
        rotate = rng.random() < 0.3  # proxies: a new IP per order
        card_bin = rng.choice(_POPULAR_BINS) if rng.random() < 0.5 else _card(rng, False)[0]
        same_email = rng.random() < 0.35
        one_address = rng.random() < 0.6
        drop = self.address_in(rng.choice(("US", "US", "GB", "CA", "DE")))
        shared_email = f"{_gibberish(rng)}@{rng.choice(_FREE_MAIL + _THROWAWAY)}"
        out = []
        for _ in range(size):
            at = at0 + timedelta(minutes=minutes * rng.random())
            p = self.base()
            self.fraudster(p, at, disposable=0.3)
            if same_email:
                p["customer"]["email"] = shared_email
            lines, subtotal = _small_cart(rng)
            _with_cart(p, lines, subtotal, "USD")
            p["shipping_address"] = dict(drop) if one_address else self.address_in(
                drop["country"])
            p["billing_address"] = self.address_in(drop["country"]) if rng.random() < 0.5 \
                else None
            p["payment"] = {"gateway": "shopify_payments",
                            "avs_result": rng.choices(("N", "U", "Y", "Z"), (50, 20, 20, 10))[0],
                            "cvv_result": rng.choices(("M", "N", "U", "P"), (55, 30, 10, 5))[0],
                            "card_bin": card_bin,
                            "card_last4": "".join(rng.choices(string.digits, k=4)),
                            "attempts": rng.choices((1, 2, 3, 4, 6), (40, 25, 15, 12, 8))[0]}
            ip = _ip(rng, rng.choice(_FRAUD_ORIGINS)) if rotate else rng.choice(ips)
            p["client"] = {"browser_ip": ip, "user_agent": "python-requests/2.31"}
            out.append(LabelledOrder(self.finish(p, at), True, "card_testing"))
        return out

    def mismatched_countries(self) -> LabelledOrder:
        rng = self.rng
        at = self.when()
        p = self.base()
        while _usd(p) < 60:
            p = self.base()
        self.fraudster(p, at)
        ship = p["shipping_address"]["country"]
        card_country = rng.choice([c for c in ("US", "GB", "CA", "DE", "FR", "AU", "JP")
                                   if c != ship])
        p["billing_address"] = self.address_in(card_country)
        r = rng.random()
        ip_country = ship if r < 0.4 else card_country if r < 0.55 else rng.choice(
            [c for c in _FRAUD_ORIGINS if c not in (ship, card_country)])
        p["client"] = {"browser_ip": _ip(rng, ip_country), "user_agent": ""}
        p["payment"] = {"gateway": "stripe",
                        "avs_result": rng.choices(("N", "U", "G", "Y", "Z"),
                                                  (35, 20, 15, 20, 10))[0],
                        "cvv_result": rng.choices(("M", "N", "U"), (80, 10, 10))[0],
                        "card_bin": _card(rng)[0], "card_last4": _card(rng)[1],
                        "attempts": rng.choices((1, 2, 3), (60, 25, 15))[0]}
        return LabelledOrder(self.finish(p, at), True, "mismatched_countries")

    def high_value_first_order(self) -> LabelledOrder:
        rng = self.rng
        at = self.when()
        p = dict(rng.choice(self.expensive))
        p["shipping_address"] = dict(p["shipping_address"])
        self.fraudster(p, at, disposable=0.1)
        ship = p["shipping_address"]["country"]
        # The card's owner lives elsewhere in the country; the parcel goes to a drop.
        p["billing_address"] = self.address_in(ship)
        p["client"] = {"browser_ip": _ip(rng, ship if rng.random() < 0.5
                                         else rng.choice(_FRAUD_ORIGINS)), "user_agent": ""}
        p["payment"] = {"gateway": "shopify_payments",
                        "avs_result": rng.choices(("Y", "N", "U", "A", "Z"),
                                                  (40, 25, 15, 10, 10))[0],
                        "cvv_result": rng.choices(("M", "N", "U"), (85, 10, 5))[0],
                        "card_bin": _card(rng)[0], "card_last4": _card(rng)[1],
                        "attempts": rng.choices((1, 2, 3), (70, 20, 10))[0]}
        return LabelledOrder(self.finish(p, at), True, "high_value_first_order")

    def avs_cvv_failure(self) -> LabelledOrder:
        rng = self.rng
        at = self.when()
        p = self.base()
        self.fraudster(p, at, disposable=0.15)
        ship = p["shipping_address"]["country"]
        p["billing_address"] = self.address_in(ship) if rng.random() < 0.5 else dict(
            p["shipping_address"])
        fail = rng.random()
        avs = "N" if fail < 0.45 else rng.choice(("A", "Z", "W")) if fail < 0.75 else "Y"
        cvv = "N" if fail >= 0.75 or rng.random() < 0.4 else rng.choice(("M", "U", "P"))
        p["payment"] = {"gateway": "stripe", "avs_result": avs, "cvv_result": cvv,
                        "card_bin": _card(rng)[0], "card_last4": _card(rng)[1],
                        "attempts": rng.choices((1, 2, 3, 4, 5, 7), (15, 20, 25, 20, 12, 8))[0]}
        p["client"] = {"browser_ip": _ip(rng, ship if rng.random() < 0.6
                                         else rng.choice(_FRAUD_ORIGINS)), "user_agent": ""}
        return LabelledOrder(self.finish(p, at), True, "avs_cvv_failure")

    def reshipper(self) -> LabelledOrder:
        rng = self.rng
        at = self.when()
        p = self.base()
        while _usd(p) < 80:
            p = self.base()
        self.fraudster(p, at, disposable=0.1)
        country, line1, city, region, postal = rng.choice(_FORWARDERS)
        p["shipping_address"] = {"name": p["shipping_address"].get("name", ""), "company": "",
                                 "line1": line1, "line2": f"Suite {rng.choice(('', 'FW', 'US'))}"
                                 f"{rng.randint(1000, 99999)}", "city": city, "region": region,
                                 "postal_code": postal, "country": country, "phone": ""}
        card_country = rng.choice([c for c in ("GB", "CA", "AU", "FR", "DE", "US", "JP", "BR",
                                               "MX") if c != country])
        p["billing_address"] = self.address_in(card_country)
        p["client"] = {"browser_ip": _ip(rng, rng.choice((card_country,) + _FRAUD_ORIGINS)),
                       "user_agent": ""}
        p["payment"] = {"gateway": "stripe",
                        "avs_result": rng.choices(("U", "G", "N", "Y"), (40, 20, 25, 15))[0],
                        "cvv_result": rng.choices(("M", "N", "U"), (85, 10, 5))[0],
                        "card_bin": _card(rng)[0], "card_last4": _card(rng)[1],
                        "attempts": rng.choices((1, 2, 3), (65, 25, 10))[0]}
        return LabelledOrder(self.finish(p, at), True, "reshipper")

    def account_takeover(self, after: datetime) -> LabelledOrder | None:
        rng = self.rng
        known = [c for c in self.customers if c.orders_in_stream >= 1]
        if not known:
            return None
        c = rng.choice(known)
        at = max(after, self.when())
        p = self.order_for(c, at)
        c.orders_in_stream -= 1  # the account holder did not place it
        c.spent_usd.pop()
        if self.expensive and rng.random() < 0.7:
            rich = rng.choice(self.expensive)
            p["lines"], p["totals"], p["currency"] = rich["lines"], rich["totals"], \
                rich["currency"]
        far = rng.random() < 0.4
        p["shipping_address"] = self.address_in(
            rng.choice([k for k in self.by_country if k != c.country]) if far else c.country)
        p["billing_address"] = dict(c.address)
        if rng.random() < 0.5:  # a saved card: the details match, CVV not asked
            p["payment"].update({"avs_result": "Y", "cvv_result": rng.choice(("U", "P", "M"))})
            if not p["payment"]["card_bin"]:
                p["payment"].update({"gateway": "stripe", "card_bin": c.card[0],
                                     "card_last4": c.card[1]})
        else:
            b, last4 = _card(rng)
            p["payment"] = {"gateway": "stripe", "avs_result": rng.choice(("N", "U", "Y")),
                            "cvv_result": rng.choice(("M", "M", "N")), "card_bin": b,
                            "card_last4": last4, "attempts": rng.choice((1, 1, 2, 3))}
        p["client"]["browser_ip"] = _ip(rng, rng.choice(_FRAUD_ORIGINS)) \
            if rng.random() < 0.7 else c.ip
        return LabelledOrder(self.finish(p, at), True, "account_takeover")


def generate_stream(n: int, seed: int = 1, *, fraud_rate: float = 0.05,
                    store: str = "stream-store", start: datetime | None = None,
                    span_hours: float = 24.0) -> list[LabelledOrder]:
    """``n`` labelled orders in payment-time order, spread over ``span_hours`` from ``start``.

    ``fraud_rate`` of them are fraud, split over the patterns by ``PATTERN_SHARE``. ``start``
    defaults to ``span_hours`` before now, so the stream ends about now.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if not 0 <= fraud_rate < 1:
        raise ValueError("fraud_rate must be in [0, 1)")
    span = timedelta(hours=span_hours)
    if start is None:
        start = datetime.now(UTC) - span
    elif start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    b = _Builder(n, seed, store, start, span)
    n_fraud = round(n * fraud_rate)
    quota = {p: round(n_fraud * share) for p, share in PATTERN_SHARE.items()}
    out: list[LabelledOrder] = []
    legit_n = n - sum(quota.values())
    # Genuine orders first, in time order, so that a customer's orders count up with time
    # (and account takeovers find customers with a history).
    out.extend(b.legit(at) for at in sorted(b.when() for _ in range(legit_n)))
    left = quota["card_testing"]
    while left > 0:
        burst = b.card_testing(left)
        out.extend(burst)
        left -= len(burst)
    for name in ("mismatched_countries", "high_value_first_order", "avs_cvv_failure",
                 "reshipper"):
        out.extend(getattr(b, name)() for _ in range(quota[name]))
    first_seen: dict[str, datetime] = {}
    for o in out:
        cid = o.payload["customer"]["id"]
        at = datetime.fromisoformat(o.payload["paid_at"])
        first_seen[cid] = min(first_seen.get(cid, at), at)
    for _ in range(quota["account_takeover"]):
        ato = b.account_takeover(start)
        if ato is not None:
            # After the account's first genuine order in the stream: it has a history by then.
            cid = ato.payload["customer"]["id"]
            at = max(datetime.fromisoformat(ato.payload["paid_at"]),
                     first_seen.get(cid, start) + timedelta(minutes=30))
            ato.payload["paid_at"] = min(at, start + span).isoformat()
            out.append(ato)
    out.sort(key=lambda o: (o.payload["paid_at"], o.payload["order_id"]))
    return out
