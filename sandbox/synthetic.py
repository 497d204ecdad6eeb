"""Realistic synthetic orders and stock for demos, tests and benchmarks.

Everything is deterministic given a seed: each call builds its own ``random.Random(seed)`` and
never touches the global random state. (Only ``paid_at`` defaults to the current time; pass it
explicitly for byte-identical output across runs.)

The store is a DTC clothing / accessories / jewellery brand shipping worldwide from five
warehouses. Orders come in two shapes, both accepted by ``domain.schemas.parse_order``:

* the native schema (``order_id`` = ``f"{store}-{n}"``), and
* the Shopify REST order object as sent in an ``orders/paid`` webhook (``id`` = 5,000,000,000 + n).
  Shopify bodies do not name the shop; these also carry a ``store`` key (which
  ``shopify_to_native`` reads as a fallback) so a payload file is self-contained.

``generate_labelled_orders`` says what each payload is meant to exercise:

* ``normal``: clean, total below 500 USD equivalent;
* ``high_value``: clean, total above 500 USD equivalent (held for manual review);
* ``risky``: below 500 USD but with every classic fraud signal (AVS "N" and CVV "N", billing
  country differing from shipping, a disposable e-mail domain, 3-5 payment attempts (native
  shape only: Shopify has no such field), a brand-new customer);
* ``invalid``: broken in exactly one way so validation rejects it with a clear reason (or, for
  the unknown currency "XXX", so the FX lookup does).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from random import Random
from typing import Any, Literal

from config.settings import DEFAULT_FX_RATES_TO_USD
from domain.clock import utcnow

__all__ = [
    "CATALOGUE",
    "KINDS",
    "WAREHOUSES",
    "OrderKind",
    "Product",
    "generate_labelled_orders",
    "generate_orders",
    "generate_stock",
    "to_usd",
    "write_orders",
]

OrderKind = Literal["normal", "high_value", "risky", "invalid"]
KINDS: tuple[OrderKind, ...] = ("normal", "high_value", "risky", "invalid")

# Normal and risky orders stay below _LOW_CAP_USD; high-value ones exceed _HIGH_FLOOR_USD. The
# margins either side of the 500 USD review threshold absorb modest FX-table overrides.
_LOW_CAP_USD = Decimal("475")
_HIGH_FLOOR_USD = Decimal("550")

SHOPIFY_ID_BASE = 5_000_000_000

# --------------------------------------------------------------------------------------------
# Catalogue and warehouses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    title: str
    price: Decimal  # USD list price
    weight_g: int
    custom: bool = False


def _sized(prefix: str, title: str, price: str, weight_g: int, sizes: str) -> list[Product]:
    return [
        Product(f"{prefix}-{s}", f"{title} / {s}", Decimal(price), weight_g) for s in sizes.split()
    ]


def _one(sku: str, title: str, price: str, weight_g: int, custom: bool = False) -> Product:
    return Product(sku, title, Decimal(price), weight_g, custom)


CATALOGUE: tuple[Product, ...] = (
    *_sized("TEE-ESS-BLK", "Essential Tee - Black", "28.00", 180, "S M L XL"),
    *_sized("TEE-ESS-WHT", "Essential Tee - White", "28.00", 180, "S M L XL"),
    *_sized("TEE-GRA-SUN", "Sunset Graphic Tee", "34.00", 190, "M L"),
    *_sized("HOOD-CLS-GRY", "Classic Hoodie - Heather Grey", "68.00", 620, "S M L XL"),
    *_sized("HOOD-ZIP-NVY", "Zip Hoodie - Navy", "78.00", 680, "M L"),
    *_sized("CREW-FLC-OAT", "Fleece Crewneck - Oatmeal", "58.00", 540, "M L"),
    *_sized("JKT-DEN-BLU", "Denim Jacket - Washed Blue", "128.00", 900, "M L"),
    _one("JKT-LTH-BLK-M", "Leather Biker Jacket / M", "420.00", 1800),
    *_sized("SNK-LOW-WHT", "Court Low Sneaker - White / EU", "119.00", 950, "40 41 42 43 44"),
    *_sized("SNK-HI-BLK", "Canvas High-Top - Black / EU", "139.00", 1050, "42 43"),
    _one("CAP-DAD-BLK", "Dad Cap - Black", "26.00", 90),
    _one("CAP-DAD-KHK", "Dad Cap - Khaki", "26.00", 90),
    _one("BEAN-RIB-MUS", "Ribbed Beanie - Mustard", "24.00", 80),
    _one("SOCK-3PK-MIX", "Crew Socks 3-Pack", "18.00", 150),
    _one("SCARF-WOOL-GRY", "Merino Scarf - Grey", "49.00", 160),
    _one("TOTE-CAN-NAT", "Canvas Tote - Natural", "22.00", 210),
    _one("BAG-LTH-WKD", "Leather Weekender Bag", "245.00", 1400),
    _one("WAL-LTH-BRN", "Leather Card Wallet - Brown", "59.00", 60),
    _one("WAL-LTH-MONO", "Monogrammed Leather Wallet", "79.00", 60, custom=True),
    *_sized("BELT-LTH-BLK", "Leather Belt - Black", "65.00", 230, "M L"),
    *_sized("RING-SLV-STK", "Sterling Stacking Ring / US", "45.00", 8, "6 7 8"),
    _one("RING-SLV-ENG-7", "Engraved Silver Band / US 7", "89.00", 10, custom=True),
    _one("RING-GLD-SIG-ENG", "14k Gold Signet Ring - Engraved", "349.00", 12, custom=True),
    _one("NECK-SLV-PND", "Sterling Pendant Necklace", "79.00", 20),
    _one("NECK-GLD-NAME", "Gold Name Necklace", "189.00", 15, custom=True),
    _one("NECK-GLD-INIT", "Gold Initial Necklace", "129.00", 12, custom=True),
    _one("BRAC-BEAD-BLK", "Onyx Bead Bracelet", "35.00", 40),
    _one("BRAC-CUFF-ENG", "Engraved Silver Cuff", "149.00", 45, custom=True),
    _one("EAR-HOOP-GLD", "Gold Huggie Hoops", "65.00", 6),
    _one("EAR-STUD-PRL", "Pearl Stud Earrings", "55.00", 5),
    _one("WATCH-CLS-SLV", "Classic Watch - Silver", "229.00", 120),
    _one("WATCH-CLS-GLD", "Classic Watch - Gold", "259.00", 120),
    _one("MUG-LOGO-WHT", "Logo Mug - White", "18.00", 420),
    _one("MUG-CUST-NAME", "Personalised Name Mug", "26.00", 420, custom=True),
    _one("POSTER-A2-CITY", "City Skyline Poster A2", "32.00", 250),
    _one("POSTER-A2-MAP", "Custom Star Map Poster A2", "48.00", 250, custom=True),
    _one("PRINT-A3-BOT", "Botanical Print A3", "24.00", 180),
    _one("STICK-PACK-10", "Sticker Pack (10)", "9.00", 30),
    _one("CASE-IP15", "Phone Case - iPhone 15", "29.00", 45),
    _one("CASE-IP15PRO", "Phone Case - iPhone 15 Pro", "29.00", 45),
    _one("CASE-MONO-IP15", "Monogram Phone Case - iPhone 15", "39.00", 45, custom=True),
    _one("CANDLE-CEDAR", "Cedar & Smoke Candle", "34.00", 380),
    _one("SUNG-RND-TRT", "Round Sunglasses - Tortoise", "85.00", 70),
)

# Which property a custom-made product's line carries.
_CUSTOM_PROPERTY: dict[str, str] = {
    "WAL-LTH-MONO": "Monogram",
    "RING-SLV-ENG-7": "Engraving",
    "RING-GLD-SIG-ENG": "Engraving",
    "NECK-GLD-NAME": "Name",
    "NECK-GLD-INIT": "Initial",
    "BRAC-CUFF-ENG": "Engraving",
    "MUG-CUST-NAME": "Name",
    "POSTER-A2-MAP": "Map location",
    "CASE-MONO-IP15": "Monogram",
}

PRODUCTS_BY_SKU: dict[str, Product] = {p.sku: p for p in CATALOGUE}

WAREHOUSES: tuple[tuple[str, str], ...] = (
    ("US-EAST", "US"),
    ("US-WEST", "US"),
    ("EU-DE", "DE"),
    ("UK-LON", "GB"),
    ("AU-SYD", "AU"),
)


def _pool(products: Iterable[Product]) -> tuple[tuple[Product, ...], list[float]]:
    """Products with cumulative popularity weights (cheap items sell more often)."""
    items = tuple(products)

    def weight(p: Product) -> float:
        if p.price < 40:
            return 3.0
        if p.price < 100:
            return 2.0
        return 1.0 if p.price < 200 else 0.5

    return items, list(accumulate(weight(p) for p in items))


_NORMAL_POOL = _pool(p for p in CATALOGUE if p.price <= 300)
_EXPENSIVE_POOL = _pool(p for p in CATALOGUE if p.price >= 120)
_RESALE_PREFIXES = ("SNK-", "WATCH-", "RING-", "NECK-", "BRAC-", "EAR-", "JKT-", "SUNG-", "BAG-")
_RISKY_POOL = _pool(p for p in CATALOGUE if p.sku.startswith(_RESALE_PREFIXES) and p.price <= 300)


def _pick(rng: Random, pool: tuple[tuple[Product, ...], list[float]]) -> Product:
    items, cum = pool
    return rng.choices(items, cum_weights=cum)[0]


# --------------------------------------------------------------------------------------------
# Money
# --------------------------------------------------------------------------------------------

_ZERO_DECIMAL = frozenset({"JPY", "KRW"})
_WHOLE_UNITS = frozenset({"SEK", "MXN", "CNY", "AED", "DKK", "NOK", "INR", "HKD"})
_STEP = {"JPY": Decimal(100), "KRW": Decimal(1000)}
_CENT = Decimal("0.01")
_ONE = Decimal(1)
_ZERO = Decimal(0)


def _quantum(currency: str) -> Decimal:
    return _ONE if currency in _ZERO_DECIMAL else _CENT


def _money(amount: Decimal, currency: str) -> str:
    return f"{amount:.0f}" if currency in _ZERO_DECIMAL else f"{amount:.2f}"


def to_usd(amount: Decimal | str, currency: str) -> Decimal:
    """``amount`` in USD with DEFAULT_FX_RATES_TO_USD (KeyError for an unknown currency)."""
    return Decimal(str(amount)) * DEFAULT_FX_RATES_TO_USD[currency]


@lru_cache(maxsize=4096)
def _localize(usd: Decimal, currency: str) -> Decimal:
    """A USD list price as the store shows it in ``currency`` (rounded to a 'nice' price)."""
    if currency == "USD" or usd == 0:
        return usd
    raw = usd / DEFAULT_FX_RATES_TO_USD[currency]
    step = _STEP.get(currency)
    if step is not None:
        return max(step, (raw / step).quantize(_ONE, ROUND_HALF_UP) * step)
    if currency in _WHOLE_UNITS:
        return max(_ONE, raw.quantize(_ONE, ROUND_HALF_UP))
    return max(Decimal("0.90"), raw.to_integral_value(ROUND_CEILING) - Decimal("0.10"))


# --------------------------------------------------------------------------------------------
# Geography: countries, cities, postal codes, streets, names
# --------------------------------------------------------------------------------------------

# "#" is a digit, "@" a letter valid in both UK and Canadian postcodes.
_POSTAL_LETTERS = "ABEGHJLNPRSTWXYZ"
_DIGITS = "0123456789"


def _expand(rng: Random, pattern: str) -> str:
    return "".join(
        rng.choice(_DIGITS) if c == "#" else rng.choice(_POSTAL_LETTERS) if c == "@" else c
        for c in pattern
    )


@dataclass(frozen=True, slots=True)
class _City:
    name: str
    region: str
    postal: tuple[str, ...]  # patterns, see _expand
    native: str = ""  # the city in the local script, for non-Latin countries


@dataclass(frozen=True, slots=True)
class _Country:
    code: str
    currency: str
    weight: float
    locale: str
    style: str  # street-address style
    cities: tuple[_City, ...]
    phone: str
    tax: float = 0.0  # indicative sales tax / VAT added at checkout (0: duties on delivery)
    native_share: float = 0.0  # share of orders written in the local (non-Latin) script


def _cities(*rows: tuple[str, ...]) -> tuple[_City, ...]:
    out = []
    for row in rows:
        name, region, postal, *native = row
        out.append(_City(name, region, tuple(postal.split("|")), native[0] if native else ""))
    return tuple(out)


_COUNTRIES: tuple[_Country, ...] = (
    _Country("US", "USD", 45, "en", "us", _cities(
        ("New York", "NY", "100##"), ("Brooklyn", "NY", "112##"), ("Los Angeles", "CA", "900##"),
        ("San Francisco", "CA", "941##"), ("San Diego", "CA", "921##"), ("Chicago", "IL", "606##"),
        ("Houston", "TX", "770##"), ("Austin", "TX", "787##"), ("Seattle", "WA", "981##"),
        ("Portland", "OR", "972##"), ("Denver", "CO", "802##"), ("Miami", "FL", "331##"),
        ("Atlanta", "GA", "303##"), ("Boston", "MA", "021##"), ("Philadelphia", "PA", "191##"),
        ("Phoenix", "AZ", "850##"), ("Minneapolis", "MN", "554##"), ("Nashville", "TN", "372##"),
        ("Columbus", "OH", "432##"), ("Salt Lake City", "UT", "841##"),
        ("Honolulu", "HI", "968##"), ("Anchorage", "AK", "995##"),
    ), "+1 ###-555-01##"),
    _Country("CA", "CAD", 7, "en", "us", _cities(
        ("Toronto", "ON", "M#@ #@#"), ("Ottawa", "ON", "K#@ #@#"), ("Vancouver", "BC", "V#@ #@#"),
        ("Montréal", "QC", "H#@ #@#"), ("Calgary", "AB", "T#@ #@#"), ("Halifax", "NS", "B#@ #@#"),
        ("Winnipeg", "MB", "R#@ #@#"),
    ), "+1 ###-555-01##"),
    _Country("GB", "GBP", 9, "en", "gb", _cities(
        ("London", "", "SW1A #@@|EC1V #@@|N1 #@@|E2 #@@|W11 #@@|SE15 #@@"),
        ("Manchester", "", "M1 #@@|M4 #@@"), ("Birmingham", "", "B1 #@@"),
        ("Bristol", "", "BS1 #@@"), ("Leeds", "", "LS1 #@@"), ("Edinburgh", "", "EH1 #@@"),
        ("Glasgow", "", "G2 #@@"), ("Cardiff", "", "CF10 #@@"),
    ), "+44 7700 900###", tax=0.20),
    _Country("DE", "EUR", 7, "de", "de", _cities(
        ("Berlin", "BE", "10###"), ("Hamburg", "HH", "20###"), ("München", "BY", "80###"),
        ("Köln", "NW", "50###"), ("Frankfurt am Main", "HE", "60###"),
        ("Stuttgart", "BW", "70###"), ("Leipzig", "SN", "04###"), ("Düsseldorf", "NW", "40###"),
    ), "+49 15# #######", tax=0.19),
    _Country("FR", "EUR", 4, "fr", "fr", _cities(
        ("Paris", "", "7500#|7501#"), ("Lyon", "", "6900#"), ("Marseille", "", "130##"),
        ("Toulouse", "", "310##"), ("Bordeaux", "", "330##"), ("Nice", "", "060##"),
        ("Lille", "", "590##"), ("Nantes", "", "440##"),
    ), "+33 6 ## ## ## ##", tax=0.20),
    _Country("AU", "AUD", 5.5, "en", "au", _cities(
        ("Sydney", "NSW", "20##"), ("Melbourne", "VIC", "30##"), ("Brisbane", "QLD", "40##"),
        ("Perth", "WA", "60##"), ("Adelaide", "SA", "50##"), ("Hobart", "TAS", "70##"),
        ("Canberra", "ACT", "26##"),
    ), "+61 491 570 ###", tax=0.10),
    _Country("JP", "JPY", 3, "ja", "jp", _cities(
        ("Chiyoda-ku", "JP-13", "100-####", "千代田区"),
        ("Shibuya-ku", "JP-13", "150-####", "渋谷区"),
        ("Shinjuku-ku", "JP-13", "160-####", "新宿区"), ("Osaka", "JP-27", "530-####", "大阪市"),
        ("Kyoto", "JP-26", "600-####", "京都市"), ("Yokohama", "JP-14", "220-####", "横浜市"),
        ("Nagoya", "JP-23", "450-####", "名古屋市"), ("Fukuoka", "JP-40", "810-####", "福岡市"),
        ("Sapporo", "JP-01", "060-####", "札幌市"),
    ), "+81 90-####-####", tax=0.10, native_share=0.5),
    _Country("NL", "EUR", 2, "nl", "de", _cities(
        ("Amsterdam", "NH", "10## @@"), ("Rotterdam", "ZH", "30## @@"),
        ("Den Haag", "ZH", "25## @@"), ("Utrecht", "UT", "35## @@"),
        ("Eindhoven", "NB", "56## @@"), ("Groningen", "GR", "97## @@"),
    ), "+31 6 ########", tax=0.21),
    _Country("ES", "EUR", 2, "es", "es", _cities(
        ("Madrid", "M", "280##"), ("Barcelona", "B", "080##"), ("Valencia", "V", "460##"),
        ("Sevilla", "SE", "410##"), ("Bilbao", "BI", "480##"), ("Málaga", "MA", "290##"),
    ), "+34 6## ### ###", tax=0.21),
    _Country("IT", "EUR", 2, "it", "it", _cities(
        ("Roma", "RM", "001##"), ("Milano", "MI", "201##"), ("Napoli", "NA", "801##"),
        ("Torino", "TO", "101##"), ("Firenze", "FI", "501##"), ("Bologna", "BO", "401##"),
    ), "+39 3## ### ####", tax=0.22),
    _Country("SE", "SEK", 1.5, "sv", "se", _cities(
        ("Stockholm", "", "11# ##"), ("Göteborg", "", "41# ##"), ("Malmö", "", "21# ##"),
        ("Uppsala", "", "75# ##"),
    ), "+46 70 ### ## ##", tax=0.25),
    _Country("MX", "MXN", 2, "es", "mx", _cities(
        ("Ciudad de México", "CMX", "06###|03###"), ("Guadalajara", "JAL", "44###"),
        ("Monterrey", "NL", "64###"), ("Puebla", "PUE", "72###"), ("Mérida", "YUC", "97###"),
    ), "+52 55 #### ####"),
    _Country("BR", "BRL", 2, "pt", "br", _cities(
        ("São Paulo", "SP", "01###-###"), ("Rio de Janeiro", "RJ", "20###-###"),
        ("Belo Horizonte", "MG", "30###-###"), ("Curitiba", "PR", "80###-###"),
        ("Porto Alegre", "RS", "90###-###"), ("Salvador", "BA", "40###-###"),
    ), "+55 11 9####-####"),
    _Country("KR", "KRW", 1.5, "ko", "kr", _cities(
        ("Seoul", "KR-11", "0####", "서울특별시"), ("Busan", "KR-26", "48###", "부산광역시"),
        ("Incheon", "KR-28", "22###", "인천광역시"), ("Daegu", "KR-27", "41###", "대구광역시"),
    ), "+82 10-####-####", native_share=0.5),
    _Country("CN", "CNY", 1.5, "zh", "cn", _cities(
        ("Beijing", "BJ", "100###", "北京市"), ("Shanghai", "SH", "200###", "上海市"),
        ("Guangzhou", "GD", "510###", "广州市"), ("Shenzhen", "GD", "518###", "深圳市"),
        ("Chengdu", "SC", "610###", "成都市"), ("Hangzhou", "ZJ", "310###", "杭州市"),
    ), "+86 13# #### ####", native_share=0.5),
    # RUB is not in the FX table: Russian customers pay in USD.
    _Country("RU", "USD", 1, "ru", "ru", _cities(
        ("Moscow", "MOW", "10####|12####", "Москва"),
        ("Saint Petersburg", "SPE", "19####", "Санкт-Петербург"),
        ("Novosibirsk", "NVS", "630###", "Новосибирск"), ("Kazan", "TA", "420###", "Казань"),
        ("Yekaterinburg", "SVE", "620###", "Екатеринбург"),
    ), "+7 9## ###-##-##", native_share=0.5),
    _Country("AE", "AED", 1, "ar", "ae", _cities(
        ("Dubai", "DU", "", "دبي"), ("Abu Dhabi", "AZ", "", "أبو ظبي"),
        ("Sharjah", "SH", "", "الشارقة"),
    ), "+971 50 ### ####", native_share=0.5),
    _Country("CH", "CHF", 1, "de", "ch", _cities(
        ("Zürich", "ZH", "80##"), ("Genève", "GE", "12##"), ("Basel", "BS", "40##"),
        ("Bern", "BE", "30##"), ("Lausanne", "VD", "10##"),
    ), "+41 7# ### ## ##", tax=0.081),
    _Country("NZ", "NZD", 1, "en", "au", _cities(
        ("Auckland", "AUK", "10##"), ("Wellington", "WGN", "60##"),
        ("Christchurch", "CAN", "80##"),
    ), "+64 21 ### ####", tax=0.15),
    _Country("SG", "SGD", 1, "en", "sg", _cities(
        ("Singapore", "", "01####|23####|52####"),
    ), "+65 9### ####"),
)
_COUNTRY_BY_CODE = {c.code: c for c in _COUNTRIES}
_COUNTRY_CUM = list(accumulate(c.weight for c in _COUNTRIES))

_US_STATE_TAX = {
    "NY": 0.08875, "CA": 0.0725, "IL": 0.1025, "TX": 0.0825, "WA": 0.101, "OR": 0.0,
    "CO": 0.0881, "FL": 0.07, "GA": 0.089, "MA": 0.0625, "PA": 0.06, "AZ": 0.086,
    "MN": 0.08025, "TN": 0.0925, "OH": 0.0775, "UT": 0.0725, "HI": 0.045, "AK": 0.0,
}
_CA_PROVINCE_TAX = {"ON": 0.13, "QC": 0.14975, "BC": 0.12, "AB": 0.05, "NS": 0.15, "MB": 0.12}

_LATIN_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (
        ("James", "Olivia", "Liam", "Emma", "Noah", "Ava", "Ethan", "Sophia", "Mason", "Isabella",
         "Lucas", "Mia", "Harper", "Elijah", "Amelia", "Benjamin", "Charlotte", "Daniel", "Grace",
         "Jack", "Chloe", "Aiden", "Zoe", "Priya", "Carlos", "Maya", "Aaliyah", "Hiro"),
        ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
         "Rodriguez", "Martinez", "Taylor", "Anderson", "Thomas", "Moore", "Jackson", "Martin",
         "Lee", "Walker", "Patel", "Nguyen", "O'Brien", "Kim", "Okafor", "Murphy"),
    ),
    "de": (
        ("Lukas", "Anna", "Leon", "Mia", "Finn", "Emma", "Paul", "Lena", "Jonas", "Hannah",
         "Felix", "Sophie", "Jürgen", "Zeynep"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
         "Schulz", "Hoffmann", "Köhler", "Yılmaz"),
    ),
    "fr": (
        ("Louis", "Camille", "Hugo", "Léa", "Jules", "Chloé", "Gabriel", "Manon", "Arthur",
         "Inès", "Théo", "Zoé"),
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
         "Lefèvre", "Moreau", "Girard", "Benali"),
    ),
    "es": (
        ("Hugo", "Lucía", "Martín", "Sofía", "Pablo", "María", "Alejandro", "Paula", "Santiago",
         "Valeria", "Mateo", "Ximena"),
        ("García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez", "Pérez",
         "Gómez", "Hernández", "Ramírez", "Flores"),
    ),
    "it": (
        ("Leonardo", "Giulia", "Francesco", "Sofia", "Alessandro", "Aurora", "Lorenzo", "Martina",
         "Matteo", "Chiara"),
        ("Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci",
         "Marino", "Greco"),
    ),
    "nl": (
        ("Daan", "Emma", "Sem", "Julia", "Lucas", "Tess", "Levi", "Sophie", "Finn", "Anna"),
        ("de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Visser", "Smit",
         "Meijer", "de Boer"),
    ),
    "sv": (
        ("Oscar", "Alice", "William", "Maja", "Lucas", "Elsa", "Hugo", "Astrid", "Liam", "Ebba"),
        ("Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson",
         "Persson", "Svensson", "Lindqvist"),
    ),
    "pt": (
        ("Miguel", "Helena", "Arthur", "Alice", "Gael", "Laura", "Heitor", "Valentina", "Davi",
         "Beatriz", "João", "Luíza"),
        ("Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira",
         "Lima", "Gomes", "Conceição"),
    ),
}

# (latin, native) pairs; Russian first names also carry whether they are female.
_SCRIPT_NAMES: dict[str, tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, str], ...]]] = {
    "ja": (
        (("Yuki", "由紀"), ("Haruto", "陽翔"), ("Sakura", "さくら"), ("Ren", "蓮"), ("Aoi", "葵"),
         ("Hina", "陽菜"), ("Sota", "颯太"), ("Yui", "結衣"), ("Kenji", "健二"), ("Naomi", "直美")),
        (("Sato", "佐藤"), ("Suzuki", "鈴木"), ("Takahashi", "高橋"), ("Tanaka", "田中"),
         ("Watanabe", "渡辺"), ("Ito", "伊藤"), ("Yamamoto", "山本"), ("Nakamura", "中村"),
         ("Kobayashi", "小林"), ("Kato", "加藤")),
    ),
    "zh": (
        (("Wei", "伟"), ("Fang", "芳"), ("Na", "娜"), ("Min", "敏"), ("Jing", "静"), ("Lei", "磊"),
         ("Jun", "军"), ("Yang", "洋"), ("Yan", "艳"), ("Xiuying", "秀英")),
        (("Wang", "王"), ("Li", "李"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈"),
         ("Yang", "杨"), ("Huang", "黄"), ("Zhao", "赵"), ("Wu", "吴"), ("Zhou", "周")),
    ),
    "ko": (
        (("Minjun", "민준"), ("Seoyeon", "서연"), ("Jiho", "지호"), ("Jiwoo", "지우"),
         ("Hayoon", "하윤"), ("Doyun", "도윤"), ("Eunji", "은지"), ("Hyunwoo", "현우")),
        (("Kim", "김"), ("Lee", "이"), ("Park", "박"), ("Choi", "최"), ("Jung", "정"),
         ("Kang", "강"), ("Cho", "조"), ("Yoon", "윤")),
    ),
    "ru": (
        (("Ivan", "Иван", ""), ("Dmitry", "Дмитрий", ""), ("Alexei", "Алексей", ""),
         ("Sergei", "Сергей", ""), ("Anna", "Анна", "f"), ("Maria", "Мария", "f"),
         ("Olga", "Ольга", "f"), ("Ekaterina", "Екатерина", "f")),
        (("Ivanov", "Иванов"), ("Smirnov", "Смирнов"), ("Kuznetsov", "Кузнецов"),
         ("Popov", "Попов"), ("Sokolov", "Соколов"), ("Lebedev", "Лебедев"),
         ("Kozlov", "Козлов"), ("Novikov", "Новиков")),
    ),
    "ar": (
        (("Mohammed", "محمد"), ("Ahmed", "أحمد"), ("Omar", "عمر"), ("Khalid", "خالد"),
         ("Fatima", "فاطمة"), ("Aisha", "عائشة"), ("Mariam", "مريم"), ("Layla", "ليلى")),
        (("Al Mansouri", "المنصوري"), ("Al Hashimi", "الهاشمي"), ("Al Suwaidi", "السويدي"),
         ("Al Mazrouei", "المزروعي"), ("Haddad", "حداد"), ("Khoury", "خوري"),
         ("Al Falasi", "الفلاسي")),
    ),
}

_STREETS: dict[str, tuple[Any, ...]] = {
    "us": ("Main", "Oak", "Maple", "Cedar", "Elm", "Pine", "Washington", "Lake", "Hill",
           "Sunset", "Park", "2nd", "Highland", "Lincoln", "Church", "Willow", "Franklin"),
    "gb": ("High Street", "Station Road", "Church Lane", "Victoria Road", "Park Avenue",
           "King's Road", "Mill Lane", "The Green", "Queen Street", "London Road"),
    "de": ("Hauptstraße", "Bahnhofstraße", "Gartenstraße", "Schillerstraße", "Goethestraße",
           "Lindenallee", "Friedrichstraße", "Bergstraße"),
    "nl": ("Prinsengracht", "Keizersgracht", "Kerkstraat", "Dorpsstraat", "Molenweg",
           "Stationsweg"),
    "ch": ("Bahnhofstrasse", "Seestrasse", "Dorfstrasse", "Kirchgasse", "Rue du Rhône"),
    "fr": ("rue de la Paix", "rue Victor Hugo", "avenue Jean Jaurès", "boulevard Saint-Germain",
           "rue du Faubourg Saint-Antoine", "place de la République", "rue des Lilas"),
    "es": ("Calle Mayor", "Calle de Alcalá", "Gran Vía", "Avenida de la Constitución",
           "Calle Real", "Paseo de Gracia"),
    "it": ("Via Roma", "Via Garibaldi", "Corso Vittorio Emanuele II", "Via Dante",
           "Via Mazzini", "Viale Europa"),
    "se": ("Drottninggatan", "Storgatan", "Kungsgatan", "Vasagatan", "Skolgatan"),
    "mx": ("Av. Paseo de la Reforma", "Calle Madero", "Av. Insurgentes Sur", "Calle 5 de Mayo",
           "Av. Juárez"),
    "br": ("Rua Augusta", "Avenida Paulista", "Rua das Flores", "Rua XV de Novembro",
           "Avenida Atlântica"),
    "au": ("George St", "Collins St", "Queen St", "Hay St", "King William St", "Ponsonby Rd",
           "Cuba St"),
    "sg": ("Orchard Road", "Tanjong Pagar Road", "Bukit Timah Road", "Tiong Bahru Road"),
    "jp": (("Honcho", "本町"), ("Nishi", "西"), ("Higashi", "東"), ("Minami", "南"),
           ("Chuo", "中央"), ("Sakuragaoka", "桜丘町"), ("Jingumae", "神宮前")),
    "kr": (("Teheran-ro", "테헤란로"), ("Sejong-daero", "세종대로"), ("Gangnam-daero", "강남대로"),
           ("Olympic-ro", "올림픽로"), ("Haeundae-ro", "해운대로")),
    "cn": (("Jianguo Road", "建国路"), ("Nanjing Road", "南京路"), ("Zhongshan Road", "中山路"),
           ("Renmin Road", "人民路"), ("Huaihai Road", "淮海路")),
    "ru": (("ul. Tverskaya", "ул. Тверская"), ("ul. Lenina", "ул. Ленина"),
           ("pr. Mira", "пр-т Мира"), ("ul. Sadovaya", "ул. Садовая"),
           ("Nevsky pr.", "Невский пр-т")),
    "ae": (("Sheikh Zayed Road", "شارع الشيخ زايد"), ("Al Wasl Road", "شارع الوصل"),
           ("Jumeirah Beach Road", "شارع جميرا"), ("Corniche Road", "شارع الكورنيش")),
}
_US_SUFFIXES = ("St", "Ave", "Blvd", "Rd", "Dr", "Ln", "Way", "Ct")
_COMPANIES = ("Northwind Studio", "Blue Fern Design", "Acme Creative", "Harbor & Pine")

_EMAIL_DOMAINS = ("example.com", "example.com", "example.org", "example.net")
_DISPOSABLE_DOMAINS = (
    "mailinator.com", "guerrillamail.com", "10minutemail.com", "yopmail.com", "trashmail.com",
)
_USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/125.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.0",
)
# Documentation address ranges (RFC 5737): realistic-looking, never a real client.
_IP_PREFIXES = ("192.0.2.", "198.51.100.", "203.0.113.")
_ENGRAVINGS = (
    "Forever & Always", "Est. 2019", "Carpe Diem", "Love you more", "Always", "Be brave",
    "Mom", "12.06.2021", "∞", "Together since 2015", "Always 愛", "Навсегда", "Mi vida",
    "Je t'aime", "For K. — with love",
)
_FONTS = ("Script", "Serif", "Block")
_GIFT_MESSAGES = (
    "Happy birthday!", "Congratulations on the new job!", "Merry Christmas, love you!",
    "Happy anniversary x", "Thinking of you.",
)


@lru_cache(maxsize=1024)
def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", ascii_name.lower())


@dataclass(slots=True)
class _Person:
    first: str  # as written (possibly non-Latin)
    last: str
    name: str  # the full name as the locale writes it
    first_latin: str
    last_latin: str


def _person(rng: Random, country: _Country, native: bool) -> _Person:
    loc = country.locale
    if loc in _LATIN_NAMES:
        firsts, lasts = _LATIN_NAMES[loc]
        first, last = rng.choice(firsts), rng.choice(lasts)
        return _Person(first, last, f"{first} {last}", first, last)
    firsts_s, lasts_s = _SCRIPT_NAMES[loc]
    f_row = rng.choice(firsts_s)
    l_lat, l_nat = rng.choice(lasts_s)
    f_lat, f_nat = f_row[0], f_row[1]
    if loc == "ru" and f_row[2] == "f":
        l_lat, l_nat = l_lat + "a", l_nat + "а"
    if not native:
        return _Person(f_lat, l_lat, f"{f_lat} {l_lat}", f_lat, l_lat)
    if loc == "ja":
        name = f"{l_nat} {f_nat}"
    elif loc in ("zh", "ko"):
        name = f"{l_nat}{f_nat}"
    else:
        name = f"{f_nat} {l_nat}"
    return _Person(f_nat, l_nat, name, f_lat, l_lat)


def _street(rng: Random, country: _Country, native: bool) -> tuple[str, str]:
    """(line1, line2) in the country's usual style."""
    style = country.style
    streets = _STREETS.get(style, ())
    n = rng.randint(1, 199)
    r = rng.random()
    if style == "us":
        line1 = f"{rng.randint(10, 9899)} {rng.choice(streets)} {rng.choice(_US_SUFFIXES)}"
        line2 = f"Apt {rng.randint(1, 30)}{rng.choice('ABCD')}" if r < 0.25 else (
            f"Suite {rng.randint(100, 900)}" if r < 0.3 else "")
        return line1, line2
    if style == "gb":
        return f"{n} {rng.choice(streets)}", f"Flat {rng.randint(1, 24)}" if r < 0.3 else ""
    if style == "au":
        return f"{n} {rng.choice(streets)}", f"Unit {rng.randint(1, 40)}" if r < 0.3 else ""
    if style == "sg":
        return f"{n} {rng.choice(streets)}", f"#{rng.randint(2, 30):02d}-{rng.randint(1, 99):02d}"
    if style in ("de", "nl", "ch"):
        key = "nl" if country.code == "NL" else "ch" if country.code == "CH" else "de"
        return f"{rng.choice(_STREETS[key])} {n}", f"{rng.randint(1, 5)}. OG" if (
            r < 0.15 and key != "nl") else ""
    if style == "fr":
        return f"{n} {rng.choice(streets)}", f"Appartement {rng.randint(1, 40)}" if r < 0.3 else ""
    if style == "es":
        return f"{rng.choice(streets)}, {n}", f"{rng.randint(1, 8)}º {rng.choice('ABCD')}"
    if style == "it":
        return f"{rng.choice(streets)} {n}", f"Scala B, Interno {rng.randint(1, 20)}" if (
            r < 0.3) else ""
    if style == "se":
        return f"{rng.choice(streets)} {n}", f"lgh {rng.randint(1001, 1603)}" if r < 0.4 else ""
    if style == "mx":
        return f"{rng.choice(streets)} {n}", rng.choice(("Col. Centro", "Col. Roma Norte",
                                                          "Col. Juárez", f"Int. {n % 12 + 1}"))
    if style == "br":
        return f"{rng.choice(streets)}, {rng.randint(10, 2999)}", f"Apto {rng.randint(11, 184)}"
    latin, local = rng.choice(streets)
    if style == "jp":
        block = f"{rng.randint(1, 9)}-{rng.randint(1, 30)}-{rng.randint(1, 20)}"
        room = rng.randint(101, 1205)
        if native:
            return f"{local}{block}", f"サニーハイツ{room}号室" if r < 0.6 else ""
        return f"{latin} {block}", f"Sunny Heights {room}" if r < 0.6 else ""
    if style == "kr":
        dong, ho = rng.randint(101, 112), rng.randint(101, 2505)
        if native:
            return f"{local} {n}", f"{dong}동 {ho}호"
        return f"{n} {latin}", f"Apt {dong}-{ho}"
    if style == "cn":
        room = rng.randint(101, 2808)
        if native:
            return f"{local}{n}号", f"{room}室"
        return f"No. {n} {latin}", f"Room {room}"
    if style == "ru":
        flat = rng.randint(1, 240)
        if native:
            return f"{local}, д. {n}", f"кв. {flat}"
        return f"{latin}, d. {n}", f"kv. {flat}"
    # ae
    if native:
        return f"فيلا {n}، {local}", ""
    return f"Villa {n}, {latin}", ""


def _address(rng: Random, country: _Country, person: _Person, native: bool) -> dict[str, Any]:
    city = rng.choice(country.cities)
    line1, line2 = _street(rng, country, native)
    return {
        "first_name": person.first,
        "last_name": person.last,
        "name": person.name,
        "company": rng.choice(_COMPANIES) if rng.random() < 0.04 else "",
        "line1": line1,
        "line2": line2,
        "city": city.native if native and city.native else city.name,
        "region": city.region,
        "postal_code": _expand(rng, rng.choice(city.postal)),
        "country": country.code,
        "phone": _expand(rng, country.phone) if rng.random() < 0.7 else "",
    }


# --------------------------------------------------------------------------------------------
# One order
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    product: Product
    quantity: int
    unit_price: Decimal
    properties: dict[str, str]


@dataclass(slots=True)
class _Draft:
    kind: str
    country: _Country
    currency: str
    person: _Person
    city: str
    lines: list[_Line] = field(default_factory=list)
    express: bool = False
    discount_code: str = ""
    tax_rate: Decimal = _ZERO
    # computed by _price()
    line_total: Decimal = _ZERO
    shipping: Decimal = _ZERO
    shipping_title: str = ""
    shipping_code: str = ""
    discount: Decimal = _ZERO
    tax: Decimal = _ZERO
    total: Decimal = _ZERO


def _custom_properties(rng: Random, product: Product, person: _Person, city: str) -> dict[str, str]:
    kind = _CUSTOM_PROPERTY.get(product.sku)
    if kind is None:
        return {}
    if kind == "Engraving":
        return {"Engraving": rng.choice(_ENGRAVINGS), "Font": rng.choice(_FONTS)}
    if kind == "Monogram":
        initials = (person.first_latin[:1] + person.last_latin[:1]).upper()
        return {"Monogram": ".".join(initials) + "."}
    if kind == "Name":
        return {"Name": person.first}
    if kind == "Initial":
        return {"Initial": person.first_latin[:1].upper()}
    return {"Map location": city, "Date": f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}."
            f"{rng.randint(1995, 2024)}"}


def _add_line(rng: Random, d: _Draft, product: Product, quantity: int) -> None:
    for line in d.lines:
        if line.product.sku == product.sku:
            line.quantity += quantity
            return
    props = _custom_properties(rng, product, d.person, d.city)
    d.lines.append(_Line(product, quantity, _localize(product.price, d.currency), props))


def _shipping_usd(country: str, subtotal_usd: Decimal, express: bool) -> tuple[str, str, str]:
    if country == "US":
        if express:
            return "19.95", "Express (1-2 business days)", "EXPRESS"
        if subtotal_usd >= 75:
            return "0", "Free Standard Shipping", "FREE"
        return "5.95", "Standard (3-5 business days)", "STANDARD"
    if country in ("CA", "MX"):
        if express:
            return "29.95", "Express International", "INTL-EXPRESS"
        if subtotal_usd >= 150:
            return "0", "Free International Shipping", "INTL-FREE"
        return "12.95", "Standard International", "INTL-STANDARD"
    if express:
        return "39.95", "DHL Express", "INTL-EXPRESS"
    if subtotal_usd >= 250:
        return "0", "Free International Shipping", "INTL-FREE"
    return "19.95", "Standard International", "INTL-STANDARD"


_DISCOUNT_PCT = {
    "WELCOME10": Decimal("0.10"),
    "SPRING15": Decimal("0.15"),
    "VIP20": Decimal("0.20"),
}


def _price(d: _Draft) -> Decimal:
    """Fill in the totals of ``d`` and return its total in USD."""
    cur = d.currency
    q = _quantum(cur)
    rate = DEFAULT_FX_RATES_TO_USD[cur]
    d.line_total = sum((ln.unit_price * ln.quantity for ln in d.lines), _ZERO)
    ship_usd, d.shipping_title, d.shipping_code = _shipping_usd(
        d.country.code, d.line_total * rate, d.express
    )
    d.shipping = _localize(Decimal(ship_usd), cur)
    if d.discount_code == "FREESHIP":
        d.discount = d.shipping
    elif d.discount_code:
        d.discount = (d.line_total * _DISCOUNT_PCT[d.discount_code]).quantize(q, ROUND_HALF_UP)
    else:
        d.discount = _ZERO
    goods_discount = _ZERO if d.discount_code == "FREESHIP" else d.discount
    d.tax = ((d.line_total - goods_discount) * d.tax_rate).quantize(q, ROUND_HALF_UP)
    d.total = d.line_total + d.shipping + d.tax - d.discount
    return d.total * rate


def _fill_lines(rng: Random, d: _Draft) -> None:
    """Pick the lines for the draft's kind, keeping its total on the right side of 500 USD."""
    if d.kind == "high_value":
        _add_line(rng, d, _pick(rng, _EXPENSIVE_POOL), 1)
        for _ in range(rng.choices((0, 1, 2, 3), (30, 35, 25, 10))[0]):
            _add_line(rng, d, _pick(rng, _NORMAL_POOL), 1)
        while _price(d) <= _HIGH_FLOOR_USD:
            if len(d.lines) < 5 and rng.random() < 0.6:
                _add_line(rng, d, _pick(rng, _EXPENSIVE_POOL), 1)
            else:
                max(d.lines, key=lambda ln: ln.unit_price).quantity += 1
        return
    pool = _RISKY_POOL if d.kind == "risky" else _NORMAL_POOL
    n_lines = rng.choices((1, 2, 3, 4, 5), (48, 26, 14, 7, 5))[0]
    if d.kind == "risky":
        n_lines = min(n_lines, 3)
    for _ in range(n_lines):
        qty = rng.choices((1, 2, 3), (86, 10, 4))[0]
        _add_line(rng, d, _pick(rng, pool), qty)
    while _price(d) >= _LOW_CAP_USD:
        # Shrink: the most expensive line loses a unit, or goes if it is down to one.
        priciest = max(d.lines, key=lambda ln: ln.unit_price * ln.quantity)
        if priciest.quantity > 1:
            priciest.quantity -= 1
        elif len(d.lines) > 1:
            d.lines.remove(priciest)
        else:  # unreachable with pools capped at 300 USD; a cheap fallback just in case
            cheapest = min(CATALOGUE, key=lambda p: p.price)
            d.lines[0] = _Line(cheapest, 1, _localize(cheapest.price, d.currency), {})


def _tax_rate(country: _Country, region: str) -> Decimal:
    if country.code == "US":
        return Decimal(str(_US_STATE_TAX.get(region, 0.07)))
    if country.code == "CA":
        return Decimal(str(_CA_PROVINCE_TAX.get(region, 0.13)))
    return Decimal(str(country.tax))


def _card(rng: Random) -> tuple[str, str, str]:
    """(bin, last4, company)."""
    r = rng.random()
    if r < 0.55:
        bin_, company = "4" + _expand(rng, "#####"), "Visa"
    elif r < 0.9:
        bin_, company = f"5{rng.randint(1, 5)}" + _expand(rng, "####"), "Mastercard"
    else:
        bin_, company = rng.choice(("34", "37")) + _expand(rng, "####"), "American Express"
    return bin_, _expand(rng, "####"), company


def _build(rng: Random, kind: str, paid_at: datetime) -> tuple[_Draft, dict[str, Any]]:
    """One order: the priced draft plus the parts both payload shapes share."""
    risky = kind == "risky"
    country = rng.choices(_COUNTRIES, cum_weights=_COUNTRY_CUM)[0]
    currency = country.currency
    if country.code != "US" and rng.random() < 0.08:
        currency = "USD"  # some international shoppers check out in the store's currency
    native = country.native_share > 0 and rng.random() < country.native_share
    person = _person(rng, country, native)
    ship_addr = _address(rng, country, person, native)

    # Customer.
    if risky:
        returning, vip = False, False
    else:
        vip = rng.random() < (0.2 if kind == "high_value" else 0.05)
        returning = vip or rng.random() < 0.45
    if returning:
        order_count = rng.randint(8, 40) if vip else rng.randint(2, 12)
        first_order_at = paid_at - timedelta(
            days=rng.randint(20, 1500), seconds=rng.randint(0, 86399)
        )
    else:
        order_count = 1
        first_order_at = paid_at - timedelta(seconds=rng.randint(30, 900))
    if risky:
        local = "".join(rng.choices("abcdefghijkmnpqrstuvwxyz23456789", k=rng.randint(7, 10)))
        email = f"{local}@{rng.choice(_DISPOSABLE_DOMAINS)}"
    else:
        f, la = _slug(person.first_latin), _slug(person.last_latin)
        style = rng.random()
        if style < 0.5:
            local = f"{f}.{la}"
        elif style < 0.7:
            local = f"{f}{la}{rng.randint(1, 99)}"
        elif style < 0.85:
            local = f"{f[:1]}{la}"
        else:
            local = f"{f}_{la}"
        email = f"{local}@{rng.choice(_EMAIL_DOMAINS)}"
    cust_tags = ["vip"] if vip else []
    if rng.random() < 0.3:
        cust_tags.append("newsletter")

    d = _Draft(kind, country, currency, person, ship_addr["city"])
    d.express = rng.random() < 0.1
    d.tax_rate = _tax_rate(country, ship_addr["region"])
    r = rng.random()
    if vip and r < 0.5:
        d.discount_code = "VIP20"
    elif not returning and r < (0.35 if risky else 0.15):
        d.discount_code = "WELCOME10"
    elif r < 0.06:
        d.discount_code = "SPRING15"
    elif r < 0.09:
        d.discount_code = "FREESHIP"
    _fill_lines(rng, d)
    if d.discount_code == "FREESHIP" and d.shipping == 0:
        d.discount_code = ""
        _price(d)

    # Billing: the same address, a gift (someone else's shipping address), or, for risky
    # orders, a cardholder in another country.
    gift = not risky and rng.random() < 0.08
    if risky:
        other = rng.choices(_COUNTRIES, cum_weights=_COUNTRY_CUM)[0]
        while other.code == country.code:
            other = rng.choices(_COUNTRIES, cum_weights=_COUNTRY_CUM)[0]
        other_native = other.native_share > 0 and rng.random() < other.native_share
        bill_addr = _address(rng, other, _person(rng, other, other_native), other_native)
    elif gift:
        bill_addr = ship_addr
        recipient = _person(rng, country, native)
        ship_addr = _address(rng, country, recipient, native)
    else:
        bill_addr = dict(ship_addr)

    # Payment.
    if risky:
        gateway = rng.choice(("shopify_payments", "stripe"))
        avs, cvv, attempts = "N", "N", rng.randint(3, 5)
    else:
        gateway = rng.choices(("shopify_payments", "stripe", "paypal"), (55, 25, 20))[0]
        avs = rng.choices(("Y", "A", "Z", "U"), (86, 5, 5, 4))[0]
        cvv = rng.choices(("M", "P", "U"), (96, 2, 2))[0]
        attempts = rng.choices((1, 2), (93, 7))[0]
    card_bin, last4, company = _card(rng)

    common = {
        "email": email,
        "customer_id": rng.randrange(10**9),
        "order_count": order_count,
        "first_order_at": first_order_at,
        "customer_tags": cust_tags,
        "shipping_address": ship_addr,
        "billing_address": bill_addr,
        "billing_omitted": not risky and not gift and rng.random() < 0.2,
        "gateway": gateway,
        "avs": avs,
        "cvv": cvv,
        "attempts": attempts,
        "card_bin": card_bin,
        "card_last4": last4,
        "card_company": company,
        "ip": rng.choice(_IP_PREFIXES) + str(rng.randint(1, 254)),
        "user_agent": rng.choice(_USER_AGENTS),
        "tags": ["gift"] if gift else [],
        "gift_message": rng.choice(_GIFT_MESSAGES) if gift else "",
        "created_at": paid_at - timedelta(seconds=rng.randint(2, 90)),
    }
    return d, common


def _native_address(a: dict[str, Any]) -> dict[str, Any]:
    return {k: a[k] for k in ("name", "company", "line1", "line2", "city", "region",
                              "postal_code", "country", "phone")}


def _to_native(d: _Draft, c: dict[str, Any], order_id: str, store: str, paid_iso: str) -> dict:
    cur = d.currency
    return {
        "order_id": order_id,
        "store": store,
        "source": "native",
        "paid_at": paid_iso,
        "customer": {
            "id": f"cus_{c['customer_id']:09d}",
            "email": c["email"],
            "first_order_at": c["first_order_at"].isoformat(),
            "order_count": c["order_count"],
            "tags": c["customer_tags"],
        },
        "lines": [
            {
                "sku": ln.product.sku,
                "title": ln.product.title,
                "quantity": ln.quantity,
                "unit_price": _money(ln.unit_price, cur),
                "weight_g": ln.product.weight_g,
                "properties": dict(ln.properties),
            }
            for ln in d.lines
        ],
        "currency": cur,
        "totals": {
            "subtotal": _money(d.line_total, cur),
            "shipping": _money(d.shipping, cur),
            "tax": _money(d.tax, cur),
            "discount": _money(d.discount, cur),
            "total": _money(d.total, cur),
        },
        "shipping_address": _native_address(c["shipping_address"]),
        "billing_address": None if c["billing_omitted"] else _native_address(c["billing_address"]),
        "payment": {
            "gateway": c["gateway"],
            "avs_result": c["avs"],
            "cvv_result": c["cvv"],
            "card_bin": c["card_bin"],
            "card_last4": c["card_last4"],
            "attempts": c["attempts"],
        },
        "client": {"browser_ip": c["ip"], "user_agent": c["user_agent"]},
        "tags": c["tags"],
    }


def _shopify_address(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "first_name": a["first_name"],
        "last_name": a["last_name"],
        "name": f"{a['first_name']} {a['last_name']}",
        "company": a["company"] or None,
        "address1": a["line1"],
        "address2": a["line2"] or None,
        "city": a["city"],
        "province_code": a["region"] or None,
        "country_code": a["country"],
        "zip": a["postal_code"] or None,
        "phone": a["phone"] or None,
    }


def _to_shopify(d: _Draft, c: dict[str, Any], seq: int, store: str, paid_iso: str) -> dict:
    cur = d.currency
    order_id = SHOPIFY_ID_BASE + seq
    created = c["created_at"].isoformat()
    person = d.person
    return {
        "id": order_id,
        "store": store,
        "name": f"#{1000 + seq}",
        "order_number": 1000 + seq,
        "email": c["email"],
        "contact_email": c["email"],
        "created_at": created,
        "updated_at": paid_iso,
        "processed_at": paid_iso,
        "currency": cur,
        "presentment_currency": cur,
        "financial_status": "paid",
        "fulfillment_status": None,
        "confirmed": True,
        "test": False,
        "total_price": _money(d.total, cur),
        # Shopify's subtotal is after line discounts but before shipping ones.
        "subtotal_price": _money(
            d.line_total - (_ZERO if d.discount_code == "FREESHIP" else d.discount), cur
        ),
        "total_line_items_price": _money(d.line_total, cur),
        "total_tax": _money(d.tax, cur),
        "total_discounts": _money(d.discount, cur),
        "total_weight": sum(ln.product.weight_g * ln.quantity for ln in d.lines),
        "taxes_included": False,
        "shipping_lines": [
            {"price": _money(d.shipping, cur), "title": d.shipping_title, "code": d.shipping_code}
        ],
        "line_items": [
            {
                "id": order_id * 10 + j,
                "sku": ln.product.sku,
                "title": ln.product.title,
                "name": ln.product.title,
                "vendor": store,
                "quantity": ln.quantity,
                "price": _money(ln.unit_price, cur),
                "grams": ln.product.weight_g,
                "requires_shipping": True,
                "taxable": True,
                "properties": [{"name": k, "value": v} for k, v in ln.properties.items()],
            }
            for j, ln in enumerate(d.lines)
        ],
        "shipping_address": _shopify_address(c["shipping_address"]),
        "billing_address": _shopify_address(c["billing_address"]),
        "customer": {
            "id": 7_000_000_000 + c["customer_id"],
            "email": c["email"],
            "first_name": person.first,
            "last_name": person.last,
            "created_at": c["first_order_at"].isoformat(),
            "orders_count": c["order_count"],
            "tags": ", ".join(c["customer_tags"]),
            "verified_email": True,
        },
        "payment_details": {
            "avs_result_code": c["avs"],
            "cvv_result_code": c["cvv"],
            "credit_card_bin": c["card_bin"],
            "credit_card_number": f"•••• •••• •••• {c['card_last4']}",
            "credit_card_company": c["card_company"],
        },
        "client_details": {"browser_ip": c["ip"], "user_agent": c["user_agent"]},
        "browser_ip": c["ip"],
        "payment_gateway_names": [c["gateway"]],
        "tags": ", ".join(c["tags"]),
        "note": None,
        "note_attributes": (
            [{"name": "gift_message", "value": c["gift_message"]}] if c["gift_message"] else []
        ),
        "discount_codes": (
            [{
                "code": d.discount_code,
                "amount": _money(d.discount, cur),
                "type": "shipping" if d.discount_code == "FREESHIP" else "percentage",
            }]
            if d.discount_code
            else []
        ),
    }


_ORDER_BREAKAGES = (
    "missing_shipping_address",
    "unknown_currency",
    "subtotal_mismatch",
    "no_lines",
)
_LINE_BREAKAGES = ("zero_quantity", "negative_price", "missing_sku")
_BREAKAGES = _ORDER_BREAKAGES + _LINE_BREAKAGES


def _break(rng: Random, p: dict[str, Any], shopify: bool, d: _Draft) -> None:
    """Break a valid payload in exactly one clear way."""
    lines = p["line_items" if shopify else "lines"]
    # A bad line in a one-line order also empties the validated tuple, so pydantic adds a second
    # error ("lines: at least 1 item"); such orders get an order-level breakage instead.
    how = rng.choice(_BREAKAGES if len(lines) > 1 else _ORDER_BREAKAGES)
    line = rng.choice(lines)
    price_key = "price" if shopify else "unit_price"
    if how == "missing_shipping_address":
        del p["shipping_address"]
    elif how == "zero_quantity":
        line["quantity"] = 0
    elif how == "negative_price":
        line[price_key] = "-" + line[price_key]
    elif how == "unknown_currency":
        p["currency"] = "XXX"
        if shopify:
            p["presentment_currency"] = "XXX"
    elif how == "subtotal_mismatch":
        off = _localize(Decimal(10), d.currency)
        target = p if shopify else p["totals"]
        keys = ("total_line_items_price", "subtotal_price", "total_price") if shopify else (
            "subtotal", "total")
        for k in keys:
            target[k] = _money(Decimal(target[k]) + off, d.currency)
    elif how == "no_lines":
        lines.clear()
    elif shopify:  # missing_sku: Shopify sends null for a variant without a SKU
        line["sku"] = None
    else:
        del line["sku"]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate_labelled_orders(
    n: int,
    seed: int = 0,
    *,
    store: str = "demo-store",
    invalid_rate: float = 0.02,
    high_value_rate: float = 0.04,
    shopify_rate: float = 0.3,
    risky_rate: float = 0.03,
    start_id: int = 1,
    paid_at: datetime | None = None,
) -> list[tuple[OrderKind, dict[str, Any]]]:
    """``n`` JSON-ready order payloads, each with the kind it was generated as.

    Kinds are drawn independently per order with the given rates (the rest are "normal");
    ``shopify_rate`` of the payloads, independently of their kind, use the Shopify REST shape.
    Native ids are ``f"{store}-{start_id + i}"``; Shopify ids ``5_000_000_000 + start_id + i``,
    so consecutive batches with advancing ``start_id`` never collide.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    for rate_name, rate in (("invalid_rate", invalid_rate), ("high_value_rate", high_value_rate),
                            ("risky_rate", risky_rate), ("shopify_rate", shopify_rate)):
        if not 0 <= rate <= 1:
            raise ValueError(f"{rate_name} must be between 0 and 1, got {rate}")
    if invalid_rate + high_value_rate + risky_rate > 1:
        raise ValueError("invalid_rate + high_value_rate + risky_rate must not exceed 1")
    if paid_at is None:
        paid_at = utcnow()
    elif paid_at.tzinfo is None:
        paid_at = paid_at.replace(tzinfo=UTC)
    paid_iso = paid_at.isoformat()
    t_invalid = invalid_rate
    t_high = t_invalid + high_value_rate
    t_risky = t_high + risky_rate

    rng = Random(seed)
    out: list[tuple[OrderKind, dict[str, Any]]] = []
    for i in range(n):
        u = rng.random()
        kind: OrderKind = (
            "invalid" if u < t_invalid else "high_value" if u < t_high
            else "risky" if u < t_risky else "normal"
        )
        shopify = rng.random() < shopify_rate
        seq = start_id + i
        d, common = _build(rng, "normal" if kind == "invalid" else kind, paid_at)
        if shopify:
            payload = _to_shopify(d, common, seq, store, paid_iso)
        else:
            payload = _to_native(d, common, f"{store}-{seq}", store, paid_iso)
        if kind == "invalid":
            _break(rng, payload, shopify, d)
        out.append((kind, payload))
    return out


def generate_orders(
    n: int,
    seed: int = 0,
    *,
    store: str = "demo-store",
    invalid_rate: float = 0.02,
    high_value_rate: float = 0.04,
    shopify_rate: float = 0.3,
    risky_rate: float = 0.03,
    start_id: int = 1,
    paid_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """The payloads of ``generate_labelled_orders`` with the same arguments."""
    return [
        payload
        for _, payload in generate_labelled_orders(
            n, seed, store=store, invalid_rate=invalid_rate, high_value_rate=high_value_rate,
            shopify_rate=shopify_rate, risky_rate=risky_rate, start_id=start_id, paid_at=paid_at,
        )
    ]


def with_own_emails(payloads: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    """The payloads with each order's e-mail address made its own: ``local.N@domain``, N
    counting from ``first``. A long benchmark draws the same names again and again (a million
    orders share a few thousand addresses), and the fraud stage rightly holds an address seen
    on many orders and cards for review; a benchmark of ordinary orders wants none of that.
    Every place the address appears (Shopify's ``email``, ``contact_email``, the customer's)
    gets the same new one."""
    def swap(value: Any, new: dict[str, str], n: int) -> Any:
        if isinstance(value, dict):
            return {k: swap(v, new, n) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v, new, n) for v in value]
        if isinstance(value, str) and value.count("@") == 1 and " " not in value:
            if value not in new:
                local, domain = value.split("@")
                new[value] = f"{local}.{n}@{domain}"
            return new[value]
        return value

    return [swap(p, {}, n) for n, p in enumerate(payloads, start=first)]


def generate_stock(seed: int = 0, units_per_sku: int = 500) -> list[dict[str, Any]]:
    """On-hand stock for every SKU in every warehouse.

    US-EAST (the main warehouse) holds ``units_per_sku`` of everything; the others hold a
    uniform 0.5x-1.5x of it.
    """
    if units_per_sku < 0:
        raise ValueError("units_per_sku must be >= 0")
    rng = Random(seed)
    low, high = units_per_sku // 2, (units_per_sku * 3) // 2
    return [
        {
            "sku": p.sku,
            "warehouse": code,
            "country": country,
            "on_hand": units_per_sku if code == "US-EAST" else rng.randint(low, high),
        }
        for p in CATALOGUE
        for code, country in WAREHOUSES
    ]


def write_orders(
    path: str | Path, payloads: Sequence[dict[str, Any]], fmt: Literal["jsonl", "json"] = "jsonl"
) -> Path:
    """Write payloads as JSON lines (one order per line) or as one JSON array; UTF-8."""
    path = Path(path)
    if fmt == "jsonl":
        text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in payloads)
    elif fmt == "json":
        text = json.dumps(list(payloads), ensure_ascii=False, indent=2) + "\n"
    else:
        raise ValueError(f"fmt must be 'jsonl' or 'json', got {fmt!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
