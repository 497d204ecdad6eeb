"""Velocity: how often a card, e-mail, IP or shipping address was seen in sliding windows.

The counts live in Redis so that every worker of the fleet sees the same ones. Each counter is a
sorted set scored by the order's payment time: "orders per card" holds order ids, "cards per IP"
holds card hashes (a set member per distinct card, its score the latest use). Adding the same
order twice (a redelivered task) changes nothing, so the counts are idempotent.

One micro-batch is one Redis round trip: a Lua script adds every order's members, trims what
fell out of the longest window and returns the window counts, in payment-time order, so that
orders of the same card-testing burst inside one batch already count each other. Its input is
one compact string and its answer another: with one argument per value, packing the arguments
and parsing the integer replies was most of the client's CPU for this step when profiled.
Identifiers are hashed before they reach Redis: no card, e-mail, IP or address is stored. The
script touches many keys at once, so it needs a single Redis (or a cluster hash tag).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from domain.fraud.signals import Signal

TEN_MIN, HOUR, DAY, WEEK = 600, 3600, 86_400, 7 * 86_400
_WINDOW_NAMES = {TEN_MIN: "10m", HOUR: "1h", DAY: "24h", WEEK: "7d"}


@dataclass(frozen=True, slots=True)
class Counter:
    name: str
    key_field: str  # the identifier the sorted set is about
    member_field: str  # what it counts (distinct)
    windows: tuple[int, ...]

    @property
    def count_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{_WINDOW_NAMES[w]}" for w in self.windows)

    @property
    def script_args(self) -> tuple[int, ...]:
        """Longest window (what is kept), number of windows, the windows."""
        return (max(self.windows), len(self.windows), *self.windows)


# What is counted. "order" members make a count of orders; the others count distinct values.
# Distinct cards are counted from new customers' orders only: a card tester never has a
# history, while a mobile carrier's shared IP or a big office carries many known customers.
COUNTERS: tuple[Counter, ...] = (
    Counter("card_orders", "card", "order", (HOUR, DAY)),
    Counter("email_orders", "email", "order", (HOUR, DAY)),
    Counter("ip_orders", "ip", "order", (HOUR,)),
    Counter("ip_cards", "ip", "new_card", (HOUR, DAY)),
    Counter("email_cards", "email", "new_card", (DAY,)),
    Counter("addr_cards", "addr", "new_card", (DAY,)),
    Counter("addr_customers", "addr", "who", (WEEK,)),
    Counter("bin_cards", "bin", "new_card", (TEN_MIN,)),
    Counter("card_emails", "card", "email", (DAY,)),
)

_NAMES = {c.name: c.count_names for c in COUNTERS}
_INDEX = {c.name: i for i, c in enumerate(COUNTERS, start=1)}

# ARGV[1] holds one line per key: "<counter> <member> <time>"; the counters' windows are baked
# into the script. The counts come back as one comma-separated string.
_LUA_COUNTERS = ", ".join("{" + ", ".join(str(x) for x in (max(c.windows), *c.windows)) + "}"
                          for c in COUNTERS)
_SCRIPT = "local C = {" + _LUA_COUNTERS + "}" + """
local out = {}
local i = 0
for ci, member, ts in string.gmatch(ARGV[1], '(%d+) (%S+) (%S+)\\n') do
  i = i + 1
  local key, spec, t = KEYS[i], C[tonumber(ci)], tonumber(ts)
  redis.call('ZADD', key, 'GT', t, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. tostring(t - spec[1]))
  redis.call('EXPIRE', key, spec[1] + 60)
  for w = 2, #spec do
    out[#out + 1] = redis.call('ZCOUNT', key, tostring(t - spec[w]), '+inf')
  end
end
return table.concat(out, ',')
"""


def _h(value: str) -> str:
    return hashlib.blake2b(value.encode(), digest_size=8).hexdigest()


def normalise_email(email: str) -> str:
    """One mailbox, one value: case folded, +tags dropped, Gmail's ignored dots removed."""
    local, _, domain = email.strip().lower().rpartition("@")
    if not local:
        return ""
    local = local.split("+", 1)[0]
    if domain in ("gmail.com", "googlemail.com"):
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


def ip_identity(ip: str) -> str | None:
    """The IP as one client: a public IPv4, or the /64 of a public IPv6; None otherwise.

    Private, shared and documentation addresses (RFC 1918, 6598, 5737) name a proxy or no one:
    counting them would merge unrelated customers.
    """
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if not addr.is_global:
        return None
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False).network_address)
    return str(addr)


@dataclass(frozen=True, slots=True)
class VelocityInput:
    """The identifiers of one order, hashed; empty when the order does not carry one."""

    order: str
    ts: float  # payment time, epoch seconds
    card: str = ""
    new_card: str = ""  # the card, when the customer has no history (see COUNTERS)
    bin: str = ""
    email: str = ""
    ip: str = ""
    addr: str = ""  # the building (``building_key``): forwarders' suites count as one
    # The customer as a person: the e-mail (guest checkouts get a new customer id each time),
    # else the store's customer id.
    who: str = ""

    @classmethod
    def build(cls, *, order_id: int, ts: float, card_bin: str, card_last4: str, email: str,
              ip: str, building: str, customer_id: str, new_customer: bool) -> VelocityInput:
        card_bin, card_last4 = card_bin.strip(), card_last4.strip()
        has_card = card_bin.isdigit() and len(card_last4) == 4 and card_last4.isdigit()
        mail = normalise_email(email)
        client = ip_identity(ip) if ip else None
        card = _h(f"{card_bin}:{card_last4}") if has_card else ""
        return cls(
            order=f"o{order_id}",
            ts=round(ts, 3),
            card=card,
            new_card=card if new_customer else "",
            bin=card_bin[:8] if has_card else "",
            email=_h(mail) if mail else "",
            ip=_h(client) if client else "",
            addr=building,
            who=_h(mail) if mail else _h(f"id:{customer_id}") if customer_id else "",
        )


Counts = dict[str, int]  # "card_orders_1h" -> 3 (the order itself included)

_clients: dict[tuple[int, str], redis.Redis] = {}


def velocity_redis(url: str) -> redis.Redis:
    """One client per process and URL (a forked worker child builds its own)."""
    key = (os.getpid(), url)
    if key not in _clients:
        _clients[key] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                             health_check_interval=30)
    return _clients[key]


class VelocityStore:
    """Shared sliding-window counters in Redis, namespaced per store."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._script = client.register_script(_SCRIPT)

    def observe(self, store: str, orders: Sequence[VelocityInput]) -> list[Counts]:
        """Count these orders in and return each one's window counts (one Redis call)."""
        prefix = f"{self.namespace}:v:{_h(store)}:"
        keys: list[str] = []
        lines: list[str] = []
        layout: list[tuple[int, str]] = []  # (order index, count name) per returned count
        for idx, o in sorted(enumerate(orders), key=lambda p: p[1].ts):
            for c in COUNTERS:
                ident = getattr(o, c.key_field)
                member = getattr(o, c.member_field)
                if not ident or not member:
                    continue
                keys.append(f"{prefix}{c.name}:{ident}")
                lines.append(f"{_INDEX[c.name]} {member} {o.ts}\n")
                layout.extend((idx, name) for name in _NAMES[c.name])
        out: list[Counts] = [{} for _ in orders]
        if not keys:
            return out
        reply = self._script(keys=keys, args=["".join(lines)])
        values = reply.split(b",") if reply else []
        for (idx, name), value in zip(layout, values, strict=True):
            out[idx][name] = int(value)
        return out

    def clear(self) -> int:
        """Delete every counter of this namespace (benchmarks and tests). Returns keys dropped."""
        dropped = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=f"{self.namespace}:v:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                dropped += int(self.client.delete(*batch))
                batch = []
        if batch:
            dropped += int(self.client.delete(*batch))
        return dropped


# (count name, at least, points, reason): the first matching row of a group applies.
RULES: tuple[tuple[str, tuple[tuple[str, int, int, str], ...]], ...] = (
    ("card", (("card_orders_1h", 3, 20, "card used on {n} orders in the last hour"),
              ("card_orders_24h", 4, 10, "card used on {n} orders in the last 24 hours"))),
    ("email", (("email_orders_1h", 4, 10, "e-mail used on {n} orders in the last hour"),)),
    ("ip_orders", (("ip_orders_1h", 6, 10, "{n} orders from one IP in the last hour"),)),
    ("ip_cards", (("ip_cards_1h", 5, 40, "{n} different cards from one IP in the last hour"),
                  ("ip_cards_1h", 3, 25, "{n} different cards from one IP in the last hour"),
                  ("ip_cards_24h", 6, 15, "{n} different cards from one IP in 24 hours"))),
    ("email_cards", (("email_cards_24h", 3, 25, "{n} different cards on one e-mail in 24 h"),)),
    ("addr_cards", (("addr_cards_24h", 4, 35, "{n} different cards shipping to one address in "
                                                "24 h"),
                    ("addr_cards_24h", 3, 20, "{n} different cards shipping to one address in "
                                                "24 h"))),
    ("addr_customers", (("addr_customers_7d", 5, 30, "{n} customers shipping to one address in "
                                                       "7 days"),
                        ("addr_customers_7d", 3, 15, "{n} customers shipping to one address in "
                                                       "7 days"))),
    ("bin", (("bin_cards_10m", 8, 20, "{n} different cards of one BIN in 10 minutes"),)),
    ("card_emails", (("card_emails_24h", 3, 20, "card used with {n} different e-mails in 24 h"),)),
)


def velocity_signals(counts: Mapping[str, int]) -> list[Signal]:
    """Signals for the window counts of one order."""
    out: list[Signal] = []
    for group, rows in RULES:
        for name, least, points, text in rows:
            n = counts.get(name, 0)
            if n >= least:
                out.append(Signal(f"velocity_{group}", points, text.format(n=n)))
                break
    return out
