"""What the sandbox carrier sells and at what price, and what a label request must say.

Two carriers, ``sbx-post`` (economical, domestic-oriented) and ``sbx-air`` (express,
international), each with a ground and an express service; prices are a deterministic function
of carrier, service, zone (domestic or international) and weight.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sandbox.carrier.errors import BadRequest

CARRIERS: tuple[str, ...] = ("sbx-post", "sbx-air")
CURRENCY = "USD"

# A postal carrier takes lighter parcels than an air express carrier.
_MAX_WEIGHT_G = {"sbx-post": 30_000, "sbx-air": 70_000}
_WEIGHT_STEP_G = 500  # rates are charged per started 500 g


@dataclass(frozen=True)
class _Tariff:
    base: Decimal  # first 500 g
    per_step: Decimal  # each further started 500 g
    days: int  # estimated delivery days


# (carrier, service, zone) -> tariff. sbx-post is cheaper and slower than sbx-air.
_TARIFFS: dict[tuple[str, str, str], _Tariff] = {
    ("sbx-post", "ground", "domestic"): _Tariff(Decimal("4.50"), Decimal("0.90"), 4),
    ("sbx-post", "ground", "international"): _Tariff(Decimal("14.00"), Decimal("3.20"), 10),
    ("sbx-post", "express", "domestic"): _Tariff(Decimal("8.90"), Decimal("1.40"), 2),
    ("sbx-post", "express", "international"): _Tariff(Decimal("24.00"), Decimal("4.50"), 6),
    ("sbx-air", "ground", "domestic"): _Tariff(Decimal("7.20"), Decimal("1.30"), 3),
    ("sbx-air", "ground", "international"): _Tariff(Decimal("19.50"), Decimal("4.10"), 5),
    ("sbx-air", "express", "domestic"): _Tariff(Decimal("14.90"), Decimal("2.10"), 1),
    ("sbx-air", "express", "international"): _Tariff(Decimal("34.00"), Decimal("6.80"), 2),
}
SERVICES: dict[str, tuple[str, ...]] = {
    carrier: tuple(sorted({s for c, s, _ in _TARIFFS if c == carrier})) for carrier in CARRIERS
}

COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
# Empty is allowed: AE, HK, QA and others have no postal codes.
_POSTAL_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9 -]{0,15})?$")
MAX_TEXT = 255


def _zone(from_country: str, to_country: str) -> str:
    return "domestic" if from_country == to_country else "international"


def quote(carrier: str, service: str, from_country: str, to_country: str, weight_g: int) -> Decimal:
    """The price of one label: a deterministic function of carrier, service, zone and weight."""
    tariff = _TARIFFS[(carrier, service, _zone(from_country, to_country))]
    steps = max(1, math.ceil(weight_g / _WEIGHT_STEP_G))
    return (tariff.base + tariff.per_step * (steps - 1)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP
    )


@dataclass(frozen=True)
class LabelRequest:
    """One label, as the client asked for it (compared whole on an idempotent replay)."""

    idempotency_key: str
    carrier: str
    service: str
    from_country: str
    to_country: str
    to_postal_code: str
    weight_g: int
    reference: str


def _require_text(body: Mapping[str, Any], name: str, *, optional: bool = False) -> str:
    value = body.get(name, "" if optional else None)
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise BadRequest(f"{name}: required, must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise BadRequest(f"{name}: longer than {MAX_TEXT} characters")
    return value


def require_country(body: Mapping[str, Any], name: str) -> str:
    """``body[name]`` as an ISO country code, or a BadRequest naming the field."""
    value = body.get(name)
    if not isinstance(value, str) or not COUNTRY_RE.match(value):
        raise BadRequest(f"{name}: must be an ISO 3166-1 alpha-2 code such as 'US'")
    return value


def require_carrier(value: Any) -> str:
    """``value`` as one of ``CARRIERS``, or a BadRequest naming the field."""
    if value not in CARRIERS:
        raise BadRequest(f"carrier: unknown carrier {value!r}, expected one of {list(CARRIERS)}")
    return str(value)


def _require_weight(value: Any, carrier: str) -> int:
    # bool is an int in Python; a carrier would not accept `true` grams.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("weight_g: must be a positive integer (grams)")
    if value > _MAX_WEIGHT_G[carrier]:
        raise BadRequest(f"weight_g: {carrier} accepts at most {_MAX_WEIGHT_G[carrier]} g")
    return value


def parse_label_request(body: Any) -> LabelRequest:
    """Validate one label request; a BadRequest names the first faulty field."""
    if not isinstance(body, dict):
        raise BadRequest("label request must be a JSON object")
    key = _require_text(body, "idempotency_key")
    carrier = require_carrier(body.get("carrier"))
    service = body.get("service")
    if service not in SERVICES[carrier]:
        raise BadRequest(
            f"service: {carrier} has no service {service!r}, expected one of "
            f"{list(SERVICES[carrier])}"
        )
    from_country = require_country(body, "from_country")
    to_country = require_country(body, "to_country")
    postal = body.get("to_postal_code")
    if not isinstance(postal, str) or not _POSTAL_RE.match(postal):
        raise BadRequest("to_postal_code: letters/digits/space/dash, max 16 (empty where the "
                         "country has no postal codes)")
    weight_g = _require_weight(body.get("weight_g"), carrier)
    reference = _require_text(body, "reference", optional=True)
    return LabelRequest(
        key, carrier, str(service), from_country, to_country, postal, weight_g, reference
    )


def rates_for(carriers: Sequence[str], from_country: str, to_country: str,
              weight_g: int) -> list[dict[str, Any]]:
    """Every service of ``carriers`` that takes the parcel, cheapest first."""
    zone = _zone(from_country, to_country)
    out: list[dict[str, Any]] = [
        {
            "carrier": carrier,
            "service": service,
            "rate": str(quote(carrier, service, from_country, to_country, weight_g)),
            "currency": CURRENCY,
            "est_delivery_days": _TARIFFS[(carrier, service, zone)].days,
        }
        for carrier in carriers
        if weight_g <= _MAX_WEIGHT_G[carrier]  # a carrier quotes only what it can carry
        for service in SERVICES[carrier]
    ]
    out.sort(key=lambda r: (Decimal(r["rate"]), r["carrier"], r["service"]))
    return out
