"""Orders from more than one platform, mapped onto the one native schema.

* Shopify webhook bodies are mapped by :func:`domain.schemas.shopify_to_native`.
* WooCommerce order webhooks (REST API v3 order objects) by :func:`woocommerce_to_native`.
* A CSV order feed (a warehouse partner's SFTP drop, a marketplace export) by
  :func:`parse_order_csv`.

Every order keeps its platform in ``source``; an order is unique per (source, store, order id),
so order 1001 from Shopify and order 1001 from WooCommerce never collide.

Both Shopify and WooCommerce sign a webhook with a base64 HMAC-SHA256 of the raw body; orderfleet
signs its own push-back webhooks the same way (:func:`sign_body`).

CSV order feed
--------------
UTF-8, comma separated, a header row, one row per order line; rows of one order share its
``order_id`` (they need not be adjacent). Order-level columns are read from the order's first row
and must not contradict it on later rows (an empty cell repeats the first row's value).

=================  ========  ==================================================================
column             required  meaning
=================  ========  ==================================================================
order_id           yes       the store's order id
store              yes*      store name (*or ``orderfleet submit --store``)
paid_at            yes       ISO 8601; no offset means UTC
currency           yes       ISO 4217 code
customer_id        yes       the store's customer id
customer_email     no
sku                yes       one line: SKU, quantity, unit price (before discounts)
quantity           yes
unit_price         yes
weight_g           no        grams per unit
title              no
properties         no        line properties as ``name=value`` pairs separated by ``;``
ship_name          no        shipping address
ship_company       no
ship_line1         yes
ship_line2         no
ship_city          yes
ship_region        no
ship_postal_code   no
ship_country       yes       ISO 3166 alpha-2
ship_phone         no
shipping           no        order totals; total defaults to lines + shipping + tax - discount
tax                no
discount           no
total              no
tags               no        separated by ``;``
=================  ========  ==================================================================
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from domain.schemas import shipping_method_of

# --------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------


def sign_body(secret: str, body: bytes) -> str:
    """base64(HMAC-SHA256(secret, body)): Shopify's, WooCommerce's and our own signature."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_matches(secret: str, body: bytes, signature: str | None) -> bool:
    """Constant-time check of a base64 HMAC-SHA256 signature header against the raw body."""
    if not signature:
        return False
    return hmac.compare_digest(sign_body(secret, body).encode("ascii"),
                               signature.strip().encode("ascii", "replace"))


# --------------------------------------------------------------------------------------------
# WooCommerce
# --------------------------------------------------------------------------------------------

# Order statuses WooCommerce uses for an order whose payment is complete.
WOO_PAID_STATUSES = frozenset({"processing", "completed"})
WOO_CANCELLED_STATUSES = frozenset({"cancelled", "refunded"})


def _woo_address(a: Any) -> dict[str, Any] | None:
    if not isinstance(a, dict) or not any(a.get(k) for k in ("address_1", "city", "country")):
        return None
    name = " ".join(str(p) for p in (a.get("first_name"), a.get("last_name")) if p)
    return {
        "name": name,
        "company": a.get("company") or "",
        "line1": a.get("address_1") or "",
        "line2": a.get("address_2") or "",
        "city": a.get("city") or "",
        "region": a.get("state") or "",
        "postal_code": a.get("postcode") or "",
        "country": a.get("country") or "",
        "phone": a.get("phone") or "",
    }


def _woo_time(value: Any) -> Any:
    # WooCommerce's *_gmt fields carry no offset but are UTC.
    if isinstance(value, str) and value and not value.endswith("Z") and "+" not in value[10:]:
        return value + "Z"
    return value


def _money(value: Any) -> Decimal | None:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    # NaN, infinities and absurd exponents would fail later arithmetic: validation names them.
    return d if d.is_finite() and abs(d) < Decimal("1e12") else None


def woocommerce_to_native(o: dict[str, Any], *, store: str) -> dict[str, Any]:
    """Map a WooCommerce REST v3 order object (an ``order.*`` webhook body) onto the schema.

    Malformed values pass through unchanged so that validation names the native field.
    """
    lines: list[Any] = []
    notes: list[str] = []
    subtotal = Decimal("0")
    raw_lines = o.get("line_items")
    for li in raw_lines if isinstance(raw_lines, list) else [raw_lines]:
        if not isinstance(li, dict):
            lines.append(li)
            continue
        qty = li.get("quantity")
        line_subtotal = _money(li.get("subtotal"))
        unit_price: Any = li.get("price")
        if line_subtotal is not None and isinstance(qty, int) and qty > 0:
            # ``subtotal`` is the line before coupons; ``price`` is after them.
            unit_price = (line_subtotal / qty).quantize(Decimal("0.01"), ROUND_HALF_UP)
            subtotal += line_subtotal
        props = {}
        meta_data = li.get("meta_data")
        for meta in meta_data if isinstance(meta_data, list) else []:
            # Keys starting with "_" are WooCommerce's and plugins' internals.
            if isinstance(meta, dict) and meta.get("key") and not str(meta["key"]).startswith("_"):
                props[str(meta.get("display_key") or meta["key"])] = str(
                    meta.get("display_value", meta.get("value", "")))
        sku = li.get("sku") or ""
        product = li.get("variation_id") or li.get("product_id")
        if not sku and product not in (None, "", 0):
            # Stores without SKUs are common: the product stands in, and a person looks first.
            sku = f"woo-product-{product}"[:128]
            notes.append(f"line {len(lines) + 1} has no SKU: {sku} stands in for it")
        lines.append({"sku": sku, "quantity": qty, "unit_price": unit_price,
                      "title": li.get("name") or "", "properties": props})
    raw_billing = o.get("billing")
    billing: dict[str, Any] = raw_billing if isinstance(raw_billing, dict) else {}
    customer_id = o.get("customer_id")
    guest = next((str(v)[:255] for v in (billing.get("email"), billing.get("phone"))
                  if v not in (None, "") and not isinstance(v, (dict, list))),
                 f"guest:{o.get('id', '')}")
    return {
        "order_id": str(o.get("id", "")),
        "store": store,
        "source": "woocommerce",
        "paid_at": _woo_time(o.get("date_paid_gmt") or o.get("date_created_gmt")),
        "customer": {
            # A guest checkout has customer_id 0: the email (or phone) is then the customer.
            "id": str(customer_id) if customer_id else guest,
            "email": billing.get("email") or "",
        },
        "lines": lines,
        "currency": o.get("currency") or "",
        "totals": {
            "subtotal": subtotal,
            "shipping": o.get("shipping_total") or "0",
            "tax": o.get("total_tax") or "0",
            "discount": o.get("discount_total") or "0",
            "total": o.get("total"),
            "tax_included": o.get("prices_include_tax") is True,
        },
        # Orders shipped to the billing address may leave the shipping block empty.
        "shipping_address": _woo_address(o.get("shipping")) or _woo_address(billing),
        "billing_address": _woo_address(billing),
        "payment": {"gateway": o.get("payment_method") or ""},
        "shipping_method": shipping_method_of(o.get("shipping_lines"), "method_title",
                                            "method_id"),
        "client": {"browser_ip": o.get("customer_ip_address") or "",
                   "user_agent": o.get("customer_user_agent") or ""},
        "intake_notes": notes,
        "payment_status": "" if o.get("status") in (None, *WOO_PAID_STATUSES)
        else str(o.get("status")),
    }


# --------------------------------------------------------------------------------------------
# CSV order feed
# --------------------------------------------------------------------------------------------

CSV_REQUIRED = ("order_id", "paid_at", "currency", "customer_id", "sku", "quantity",
                "unit_price", "ship_line1", "ship_city", "ship_country")
CSV_ORDER_COLUMNS = ("store", "paid_at", "currency", "customer_id", "customer_email",
                     "ship_name", "ship_company", "ship_line1", "ship_line2", "ship_city",
                     "ship_region", "ship_postal_code", "ship_country", "ship_phone",
                     "shipping", "tax", "discount", "total", "tags")
CSV_COLUMNS = ("order_id", *CSV_ORDER_COLUMNS[:5], "sku", "quantity", "unit_price", "weight_g",
               "title", "properties", *CSV_ORDER_COLUMNS[5:])
MAX_CSV_BYTES = 50 * 1024 * 1024


class OrderFeedError(ValueError):
    """The feed as a whole cannot be read (not CSV, missing required columns)."""


@dataclass
class CsvFeed:
    """Orders (native payloads) and the errors of rows that could not join one."""

    orders: list[dict[str, Any]] = field(default_factory=list)
    # A row-level problem: {"row": n, "order_id", "field": column, "message", "raw": cells}.
    errors: list[dict[str, Any]] = field(default_factory=list)


def _properties(cell: str) -> dict[str, str]:
    out = {}
    for pair in cell.split(";"):
        if pair.strip():
            name, _, value = pair.partition("=")
            out[name.strip()] = value.strip()
    return out


def _int_or_raw(cell: str) -> Any:
    try:
        return int(cell)
    except ValueError:
        return cell  # validation names the field


def parse_order_csv(text: str, *, store: str | None = None) -> CsvFeed:
    """Group a CSV order feed's rows into native order payloads (source ``csv``).

    Raises :class:`OrderFeedError` when the header lacks a required column; a row that
    contradicts its order's first row is reported in ``errors`` (row numbers count the header
    as row 1) and its order is left out whole, never imported with a line missing.
    """
    if len(text) > MAX_CSV_BYTES:
        raise OrderFeedError(f"the feed is over {MAX_CSV_BYTES // (1024 * 1024)} MiB; split it")
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise OrderFeedError("the feed is empty: expected a header row")
    reader.fieldnames = header
    missing = [c for c in CSV_REQUIRED if c not in header]
    if "store" not in header and not store:
        missing.append("store")
    if missing:
        raise OrderFeedError(f"missing required columns: {', '.join(missing)}")
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise OrderFeedError(f"unknown columns: {', '.join(unknown)} (see domain/platforms.py)")

    feed = CsvFeed()
    firsts: dict[str, dict[str, str]] = {}
    orders: dict[str, dict[str, Any]] = {}
    broken: set[str] = set()
    for row_no, raw in enumerate(reader, start=2):
        row = {k: (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            feed.errors.append({"row": row_no, "order_id": row.get("order_id") or None,
                                "field": "(row)", "message": "more cells than header columns",
                                "raw": raw})
            continue
        oid = row.get("order_id", "")
        if not oid:
            feed.errors.append({"row": row_no, "order_id": None, "field": "order_id",
                                "message": "required", "raw": row})
            continue
        first = firsts.setdefault(oid, row)
        clash = [c for c in CSV_ORDER_COLUMNS if row.get(c) and row.get(c) != first.get(c)]
        if clash:
            feed.errors.append({"row": row_no, "order_id": oid, "field": clash[0],
                                "message": f"differs from the order's first row "
                                           f"({first.get(clash[0])!r})", "raw": row})
            broken.add(oid)
            continue
        order = orders.get(oid)
        if order is None:
            order = orders[oid] = _csv_order(first, store)
        order["lines"].append({
            "sku": row.get("sku", ""), "quantity": _int_or_raw(row.get("quantity", "")),
            "unit_price": row.get("unit_price") or None,
            "weight_g": _int_or_raw(row.get("weight_g") or "0"),
            "title": row.get("title", ""), "properties": _properties(row.get("properties", "")),
        })
        order["csv_rows"].append(row_no)
    for oid, order in orders.items():
        if oid in broken:
            continue
        _csv_totals(order, firsts[oid])
        feed.orders.append(order)
    return feed


def _csv_order(first: dict[str, str], store: str | None) -> dict[str, Any]:
    return {
        "order_id": first["order_id"],
        "store": first.get("store") or store or "",
        "source": "csv",
        "paid_at": first.get("paid_at") or None,
        "customer": {"id": first.get("customer_id", ""), "email": first.get("customer_email", "")},
        "lines": [],
        "currency": first.get("currency", ""),
        "shipping_address": {
            "name": first.get("ship_name", ""), "company": first.get("ship_company", ""),
            "line1": first.get("ship_line1", ""), "line2": first.get("ship_line2", ""),
            "city": first.get("ship_city", ""), "region": first.get("ship_region", ""),
            "postal_code": first.get("ship_postal_code", ""),
            "country": first.get("ship_country", ""), "phone": first.get("ship_phone", ""),
        },
        "tags": [t.strip() for t in first.get("tags", "").split(";") if t.strip()],
        # Where the order came from in the file: kept with a rejected payload for ops.
        "csv_rows": [],
    }


def _csv_totals(order: dict[str, Any], first: dict[str, str]) -> None:
    lines_total: Decimal | None = Decimal("0")
    for line in order["lines"]:
        price, qty = _money(line["unit_price"]), line["quantity"]
        if price is None or not isinstance(qty, int) or lines_total is None:
            lines_total = None
            continue
        lines_total += price * qty
    parts = {k: first.get(k) or "0" for k in ("shipping", "tax", "discount")}
    total: Any = first.get("total") or None
    shipping, tax, discount = (_money(parts[k]) for k in ("shipping", "tax", "discount"))
    if (total is None and lines_total is not None and shipping is not None and tax is not None
            and discount is not None):
        total = lines_total + shipping + tax - discount
    order["totals"] = {"subtotal": lines_total, **parts, "total": total}
