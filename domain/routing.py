"""Where a parcel goes: its lane (from the order's features), its warehouse and carrier.

Shared by intake (the lane is set on arrival, so every stage can serve a lane first), the
fraud check (which carrier would take the parcel: some refuse PO boxes), reservation (the
nearest warehouse with stock), sharding (waves per warehouse, carrier service, zone and lane)
and the label stage (which service, through a routing strategy: domain.route_learning).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.settings import LaneRules
from domain.zones import nearest_first

STANDARD, EXPRESS, CUSTOM, VIP, RETURNS = "standard", "express", "custom", "vip", "returns"
# Forward lanes, in the order a surge serves them (express and VIP first).
FORWARD_LANES: tuple[str, ...] = (EXPRESS, VIP, STANDARD, CUSTOM)
# Lanes whose orders the surge mechanism serves first.
PRIORITY_LANES: frozenset[str] = frozenset({EXPRESS, VIP})
DEFAULT_RULES = LaneRules()


def _lower(values: Any) -> set[str]:
    return {str(v).lower() for v in values or ()}


def is_custom_made(payload: dict[str, Any], rules: LaneRules = DEFAULT_RULES) -> bool:
    """Made to order: a flagged SKU, a personalisation property (engraving...) or a tag."""
    if _lower(payload.get("tags")) & _lower(rules.custom_tags):
        return True
    flagged = set(rules.custom_skus)
    for line in payload.get("lines", []):
        sku = str(line.get("sku", ""))
        if sku in flagged or sku.startswith(tuple(rules.custom_sku_prefixes) or ("\0",)):
            return True
        if any(w in key.lower() for key in line.get("properties", {})
               for w in rules.custom_property_words):
            return True
    return False


def is_express(payload: dict[str, Any], rules: LaneRules = DEFAULT_RULES) -> bool:
    """Promised fast: an express tag or a shipping method the store sells as express."""
    if _lower(payload.get("tags")) & _lower(rules.express_tags):
        return True
    method = str(payload.get("shipping_method") or "").lower()
    return bool(method) and any(w in method for w in rules.express_method_words)


def lane_for(payload: dict[str, Any], rules: LaneRules = DEFAULT_RULES) -> str:
    """The forward lane of an order: custom (made to order), express, vip or standard.

    Custom-made comes first: an engraved ring cannot leave in 48 hours whatever was paid for
    shipping. A lane the store does not use falls back to standard.
    """
    tags = _lower(payload.get("tags"))
    customer_tags = _lower(payload.get("customer", {}).get("tags"))
    if is_custom_made(payload, rules):
        lane = CUSTOM
    elif is_express(payload, rules):
        lane = EXPRESS
    elif (tags | customer_tags) & _lower(rules.vip_tags):
        lane = VIP
    else:
        lane = STANDARD
    return lane if lane in rules.lanes else STANDARD


def promise_hours(rules: LaneRules, lane: str | None) -> int:
    """Dispatch promise of a lane in hours (standard's for a lane without its own)."""
    hours = rules.promise_hours
    return hours.get(lane or STANDARD, hours.get(STANDARD, 72))


def carrier_for(warehouse_country: str, ship_country: str) -> tuple[str, str]:
    """(carrier, service): the post for domestic parcels, air express across borders."""
    if warehouse_country == ship_country:
        return "sbx-post", "ground"
    return "sbx-air", "express"


def delivering_carrier(ship_country: str, warehouse_countries: set[str]) -> str:
    """The carrier that would take the parcel: the post from a domestic warehouse, else air."""
    if ship_country in warehouse_countries:
        return carrier_for(ship_country, ship_country)[0]
    return carrier_for("", ship_country)[0]


@dataclass(frozen=True)
class WarehousePlan:
    """Where an order's units come from: one warehouse, or a split across several."""

    warehouse: str | None  # the single warehouse, when one can ship everything
    parts: dict[str, dict[str, int]] = field(default_factory=dict)  # split: wh -> sku -> qty
    reason: str = ""

    @property
    def is_split(self) -> bool:
        return self.warehouse is None and bool(self.parts)


def plan_warehouses(
    lines: list[tuple[str, int]],
    available: Mapping[tuple[str, str], int],
    warehouses: Mapping[str, str],
    ship_country: str,
) -> WarehousePlan:
    """The nearest warehouse that has every line; a split only when none has, saying why.

    The split takes each SKU from the nearest warehouse that has all of its units (a SKU's
    units are never split between warehouses). No plan when even that cannot be done.
    """
    need: dict[str, int] = defaultdict(int)
    for sku, qty in lines:
        need[sku] += qty
    order = nearest_first(warehouses, ship_country)
    for code in order:
        if all(available.get((sku, code), 0) >= qty for sku, qty in need.items()):
            return WarehousePlan(code, reason=f"nearest with stock: {code}")
    parts: dict[str, dict[str, int]] = defaultdict(dict)
    for sku, qty in sorted(need.items()):
        source = next((c for c in order if available.get((sku, c), 0) >= qty), None)
        if source is None:
            return WarehousePlan(None, reason=f"no warehouse has {qty} of {sku}")
        parts[source][sku] = qty
    where = "; ".join(f"{', '.join(sorted(skus))} from {wh}" for wh, skus in sorted(parts.items()))
    return WarehousePlan(None, dict(parts),
                         reason=f"split: no single warehouse has every line ({where})")
