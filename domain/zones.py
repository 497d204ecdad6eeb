"""Destination zones: how far a parcel travels from its warehouse, in carriers' terms.

Carriers price and time parcels by zone. We use three bands that hold across carriers:
``domestic`` (same country), ``regional`` (same customs/road region: the EU single market,
North America, Australia-New Zealand, the Gulf, the UK with Ireland) and ``international``.
Waves group by zone so that one pick wave's parcels leave on the same truck.
"""

from __future__ import annotations

from collections.abc import Mapping

DOMESTIC, REGIONAL, INTERNATIONAL = "domestic", "regional", "international"
ZONES: tuple[str, ...] = (DOMESTIC, REGIONAL, INTERNATIONAL)

_REGIONS: dict[str, frozenset[str]] = {
    "eu": frozenset({"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR",
                     "HU", "IE", "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK",
                     "SI", "ES", "SE"}),
    "uk-ie": frozenset({"GB", "IE"}),
    "efta": frozenset({"CH", "NO", "IS", "LI"}),
    "north-america": frozenset({"US", "CA", "MX"}),
    "anz": frozenset({"AU", "NZ"}),
    "gulf": frozenset({"AE", "SA", "QA", "BH", "KW", "OM"}),
}


def zone_of(from_country: str, to_country: str) -> str:
    """domestic, regional or international, from the warehouse's country to the parcel's."""
    a, b = from_country.upper(), to_country.upper()
    if a == b:
        return DOMESTIC
    if any(a in members and b in members for members in _REGIONS.values()):
        return REGIONAL
    return INTERNATIONAL


def distance_rank(from_country: str, to_country: str) -> int:
    """0 nearest (domestic) to 2 farthest: orders warehouses by nearness to a destination."""
    return ZONES.index(zone_of(from_country, to_country))


def nearest_first(warehouses: Mapping[str, str], ship_country: str) -> list[str]:
    """Warehouse codes, nearest to ``ship_country`` first (code breaks ties, stably)."""
    return sorted(warehouses, key=lambda code: (distance_rank(warehouses[code], ship_country),
                                                code))
