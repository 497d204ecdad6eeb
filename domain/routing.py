"""Where a parcel goes: its lane (from the order's features) and its carrier service.

Shared by the fraud check (which carrier would take the parcel: some refuse PO boxes),
sharding (waves per warehouse, carrier and lane) and the label stage (rate shopping).
"""

from __future__ import annotations

from typing import Any

CUSTOM_PROPERTY_WORDS = ("engraving", "monogram", "custom", "personalis", "personaliz")


def lane_for(payload: dict[str, Any]) -> str:
    """standard, custom (made to order) or vip, from the order's features."""
    tags = {t.lower() for t in payload.get("tags", [])}
    customer_tags = {t.lower() for t in payload.get("customer", {}).get("tags", [])}
    if "custom" in tags or any(
        any(w in key.lower() for w in CUSTOM_PROPERTY_WORDS)
        for line in payload.get("lines", []) for key in line.get("properties", {})
    ):
        return "custom"
    if "vip" in tags or "vip" in customer_tags:
        return "vip"
    return "standard"


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
