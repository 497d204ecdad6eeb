"""The order schema (pydantic v2) and the mapping of a Shopify REST order onto it.

Two input shapes are accepted: the native schema below, and a Shopify ``orders/paid`` webhook
body as Shopify sends it (recognised by its ``line_items``). Both become an ``Order``.

What a valid order may still need a person for (totals that do not add up, a test order, a
payment that is not captured) is not a validation error: :func:`hold_reasons` names it and
intake keeps the order ``on_hold`` for the review desk. Shopify semantics, as decided:

* ``paid_at`` is ``processed_at`` (when the payment was processed), ``created_at`` only when absent;
* money: the shop's currency (``currency``, ``total_price``, ``price``), which the store's books
  use; when only the ``*_set`` form is sent, its ``shop_money`` is read; presentment money is kept
  in the stored payload only. Numbers sent as strings and strings as numbers are both read;
* the subtotal is computed from the lines (before discounts), never read from
  ``subtotal_price`` (which is after discounts); ``taxes_included`` orders do not add the tax;
* lines with ``requires_shipping: false`` (gift cards, digital goods) and lines another
  fulfilment service fulfils (``fulfillment_service`` other than ``manual``) are not ours to ship:
  kept in ``skipped_lines``; an order with no line left is not an order for this fleet;
* a guest checkout (no ``customer``) is identified by its email, else phone, else the order;
* ``test: true`` and a ``financial_status`` other than paid hold the order with that reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

# Ten digits before the point: the USD conversion (rates up to ~10) still fits NUMERIC(14, 2).
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]
# The heaviest order we accept, in grams (orders.weight_g is a 32-bit integer).
MAX_ORDER_WEIGHT_G = 100_000_000


def _upper(v: Any) -> Any:
    return v.strip().upper() if isinstance(v, str) else v


CountryCode = Annotated[str, BeforeValidator(_upper), StringConstraints(pattern=r"^[A-Z]{2}$")]
CurrencyCode = Annotated[str, BeforeValidator(_upper), StringConstraints(pattern=r"^[A-Z]{3}$")]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=255, strip_whitespace=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)


class Address(_Strict):
    name: str = ""
    company: str = ""
    line1: NonEmpty
    line2: str = ""
    city: NonEmpty
    region: str = ""  # state / province / prefecture code or name
    postal_code: str = ""
    country: CountryCode
    phone: str = ""


class Customer(_Strict):
    id: NonEmpty
    email: str = ""
    first_order_at: datetime | None = None
    order_count: int = Field(0, ge=0)
    tags: tuple[str, ...] = ()


class LineItem(_Strict):
    sku: Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
    quantity: int = Field(ge=1, le=10_000)
    unit_price: Money
    weight_g: int = Field(0, ge=0, le=1_000_000)
    title: str = ""
    # Free-form line properties (engraving text, size...): kept for custom-made lanes.
    properties: dict[str, str] = Field(default_factory=dict)


class Totals(_Strict):
    subtotal: Money
    shipping: Money = Decimal("0")
    tax: Money = Decimal("0")
    discount: Money = Decimal("0")
    total: Money
    # Prices include tax (Shopify ``taxes_included``): the total does not add the tax again.
    tax_included: bool = False


class Payment(_Strict):
    gateway: str = ""
    # AVS and CVV result codes as card networks report them (Shopify payment_details).
    avs_result: str = ""
    cvv_result: str = ""
    card_bin: str = ""
    card_last4: str = ""
    attempts: int = Field(1, ge=1, le=100)


class ClientDetails(_Strict):
    browser_ip: str = ""
    user_agent: str = ""


class SkippedLine(_Strict):
    """A line that is not this fleet's to ship (digital, gift card, another fulfilment service)."""

    sku: str = ""
    title: str = ""
    quantity: int = 0
    reason: str


class Order(_Strict):
    """A paid order as the pipeline sees it."""

    order_id: NonEmpty = Field(description="The store's own order id (unique per store).")
    store: NonEmpty
    # The platform the order came from; with the store and order_id it is the order's unique key.
    source: Literal["native", "shopify", "woocommerce", "csv"] = "native"
    paid_at: datetime
    customer: Customer
    lines: tuple[LineItem, ...] = Field(min_length=1, max_length=500)
    currency: CurrencyCode
    totals: Totals
    shipping_address: Address
    billing_address: Address | None = None
    payment: Payment = Payment()
    client: ClientDetails = ClientDetails()
    tags: tuple[str, ...] = ()
    skipped_lines: tuple[SkippedLine, ...] = ()
    test: bool = False  # the platform's test order flag
    # What the mapping had to assume (a line without a SKU): each holds the order for a person.
    intake_notes: tuple[str, ...] = ()
    payment_status: str = ""  # the platform's own word (Shopify financial_status)
    # The shipping method the customer chose (Shopify shipping_lines title, WooCommerce
    # method_title): an express method puts the order in the express lane.
    shipping_method: str = Field("", max_length=255)

    @field_validator("paid_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        v = v if v.tzinfo else v.replace(tzinfo=UTC)
        if not 2000 <= v.year <= 2100:
            raise ValueError("must be between the years 2000 and 2100")
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _weight_fits(self) -> Order:
        if self.weight_g > MAX_ORDER_WEIGHT_G:
            raise ValueError(f"the lines weigh {self.weight_g} g, over {MAX_ORDER_WEIGHT_G} g")
        return self

    @property
    def weight_g(self) -> int:
        return sum(line.weight_g * line.quantity for line in self.lines)


PAID_STATUSES = frozenset({"", "paid", "partially_refunded"})


def totals_mismatch(order: Order) -> str | None:
    """Why the order's totals do not add up (lines - discount + shipping + tax), or None."""
    t = order.totals
    lines_total = sum((line.unit_price * line.quantity for line in order.lines), Decimal("0"))
    cent = Decimal("0.01") * (len(order.lines) + 1)
    if abs(lines_total - t.subtotal) > cent:
        return f"totals.subtotal {t.subtotal} does not match the lines ({lines_total})"
    if order.skipped_lines:  # the platform's total includes lines we do not ship
        return None
    expected = t.subtotal - t.discount + t.shipping + (Decimal("0") if t.tax_included else t.tax)
    if abs(expected - t.total) > cent:
        return (f"totals.total {t.total} is not lines {t.subtotal} - discount {t.discount} + "
                f"shipping {t.shipping} + tax {t.tax} ({expected})")
    return None


def hold_reasons(order: Order) -> list[str]:
    """What a person must look at before this valid order is fulfilled (empty: nothing)."""
    reasons = list(order.intake_notes)
    mismatch = totals_mismatch(order)
    if mismatch:
        reasons.append(mismatch)
    if order.test:
        reasons.append("test order: approve to run it through the pipeline, cancel to drop it")
    if order.payment_status.lower() not in PAID_STATUSES:
        reasons.append(f"payment status is {order.payment_status!r}, not paid")
    return reasons


class OrderValidationError(ValueError):
    """Raised for a payload that cannot become an Order; ``errors`` names each failing field."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


class NothingToShip(OrderValidationError):
    """Every line is digital, a gift card or another fulfilment service's: not an order for us."""

    def __init__(self, skipped: list[Any]) -> None:
        super().__init__([{"field": "lines", "message":
                           f"none of the {len(skipped)} lines is ours to ship"}])
        self.skipped = skipped


def _errors_from(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(order)"
        out.append({"field": prefix + field, "message": err["msg"]})
    return out


def parse_order(payload: Any, *, store: str | None = None) -> Order:
    """Validate a native or Shopify payload; raise OrderValidationError naming the fields."""
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise OrderValidationError(
            [{"field": "(order)", "message": f"expected a JSON object, got {kind}"}]
        )
    if "line_items" in payload:
        data = shopify_to_native(payload, store=store)
    else:
        data = dict(payload)
        if store and not data.get("store"):
            data["store"] = store
    if data.get("lines") == [] and data.get("skipped_lines"):
        raise NothingToShip(data["skipped_lines"])
    try:
        return Order.model_validate(data)
    except ValidationError as exc:
        raise OrderValidationError(_errors_from(exc)) from None


# --------------------------------------------------------------------------------------------
# Shopify REST order -> native
# --------------------------------------------------------------------------------------------


def _shopify_address(a: Any) -> Any:
    if not a:
        return None
    if not isinstance(a, dict):
        return a  # validation names shipping_address
    name = a.get("name") or " ".join(str(p) for p in (a.get("first_name"), a.get("last_name"))
                                     if p)
    return {
        "name": name or "",
        "company": a.get("company") or "",
        "line1": a.get("address1") or "",
        "line2": a.get("address2") or "",
        "city": a.get("city") or "",
        "region": a.get("province_code") or a.get("province") or "",
        "postal_code": a.get("zip") or "",
        "country": a.get("country_code") or "",
        "phone": a.get("phone") or "",
    }


def shipping_method_of(lines: Any, *keys: str) -> str:
    """The first shipping line's name (``keys`` in order of preference), or ''."""
    if not isinstance(lines, list) or not lines or not isinstance(lines[0], dict):
        return ""
    return next((str(lines[0][k])[:255] for k in keys if lines[0].get(k)), "")


def _tags(value: Any) -> list[str]:
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list):
        return [str(t).strip() for t in value if str(t).strip()]
    return []


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _shop_money(o: dict[str, Any], name: str) -> Any:
    """``o[name]``, or the shop currency amount of ``o[name + "_set"]`` when only that is sent."""
    value = o.get(name)
    if value is None or value == "":
        value = _obj(_obj(o.get(name + "_set")).get("shop_money")).get("amount")
    return value


def _shop_currency(o: dict[str, Any]) -> Any:
    if o.get("currency"):
        return o["currency"]
    return _obj(_obj(o.get("total_price_set")).get("shop_money")).get("currency_code") or ""


def _not_ours(li: dict[str, Any]) -> str | None:
    """Why a Shopify line is not this fleet's to ship, or None."""
    if li.get("requires_shipping") is False or li.get("gift_card") is True:
        return "needs no shipping (digital or gift card)"
    service = li.get("fulfillment_service")
    if isinstance(service, str) and service not in ("", "manual"):
        return f"fulfilled by another fulfilment service ({service})"
    return None


def _guest_id(o: dict[str, Any], customer: dict[str, Any]) -> str:
    for value in (customer.get("id"), customer.get("email"), o.get("email"),
                  o.get("contact_email"), customer.get("phone"), o.get("phone")):
        if value not in (None, "") and not isinstance(value, (dict, list)):
            return str(value)[:255]
    return f"guest:{o.get('id', '')}"[:255]


def shopify_to_native(o: dict[str, Any], *, store: str | None = None) -> dict[str, Any]:
    """Map a Shopify REST Admin order object (webhook body) onto the native schema.

    Missing or malformed values are passed through as they are so that validation reports
    them by their native field name; nothing here raises on a wrong type.
    """
    customer = _obj(o.get("customer"))
    pd = _obj(o.get("payment_details"))
    card_number = str(pd.get("credit_card_number") or "")
    gateways = o.get("payment_gateway_names")
    gateways = gateways if isinstance(gateways, list) else []
    lines: list[Any] = []
    skipped = []
    notes: list[str] = []
    subtotal: Decimal | None = Decimal("0")
    raw_lines = o.get("line_items")
    for li in raw_lines if isinstance(raw_lines, list) else [raw_lines]:
        if not isinstance(li, dict):
            lines.append(li)
            subtotal = None
            continue
        why = _not_ours(li)
        if why:
            skipped.append({"sku": str(li.get("sku") or "")[:128],
                            "title": str(li.get("title") or "")[:255],
                            "quantity": li.get("quantity") if isinstance(li.get("quantity"), int)
                            else 0, "reason": why})
            continue
        props = {}
        raw_props = li.get("properties")
        for p in raw_props if isinstance(raw_props, list) else []:
            if isinstance(p, dict) and p.get("name"):
                props[str(p["name"])] = str(p.get("value", ""))
        price = _shop_money(li, "price")
        qty = li.get("quantity")
        sku = li.get("sku") or ""
        if not sku and li.get("variant_id") not in (None, ""):
            # Stores without SKUs are common: the variant stands in, and a person looks first.
            sku = f"shopify-variant-{li['variant_id']}"[:128]
            notes.append(f"line {len(lines) + 1} has no SKU: {sku} stands in for it")
        dprice, dqty = _decimal(price), _decimal(qty)
        if subtotal is not None and dprice is not None and dqty is not None and dprice >= 0 \
                and dqty >= 0:
            subtotal += dprice * dqty
        else:
            subtotal = None
        lines.append(
            {
                "sku": sku,
                "quantity": qty,
                "unit_price": price,
                "weight_g": li.get("grams") or 0,
                "title": li.get("title") or "",
                "properties": props,
            }
        )
    shipping: Any = Decimal("0")
    raw_shipping = o.get("shipping_lines")
    for s_line in raw_shipping if isinstance(raw_shipping, list) else []:
        amount = _decimal(_shop_money(_obj(s_line), "price") or "0")
        if amount is None or shipping is None:
            shipping = _shop_money(_obj(s_line), "price")  # validation names it
            break
        shipping += amount
    client = _obj(o.get("client_details"))
    return {
        "order_id": str(o.get("id", "")),
        "store": store or o.get("store") or "",
        "source": "shopify",
        "paid_at": o.get("processed_at") or o.get("created_at"),
        "customer": {
            # A guest checkout has no customer: the email (or phone) identifies the buyer.
            "id": _guest_id(o, customer),
            "email": customer.get("email") or o.get("email") or o.get("contact_email") or "",
            "first_order_at": customer.get("created_at"),
            "order_count": customer.get("orders_count") or 0,
            "tags": _tags(customer.get("tags")),
        },
        "lines": lines,
        "currency": _shop_currency(o),
        "totals": {
            # Computed from the lines: subtotal_price is after discounts, and samples disagree.
            "subtotal": subtotal if subtotal is not None else
            _shop_money(o, "total_line_items_price"),
            "shipping": shipping,
            "tax": _shop_money(o, "total_tax") or "0",
            "discount": _shop_money(o, "total_discounts") or "0",
            "total": _shop_money(o, "total_price"),
            "tax_included": o.get("taxes_included") is True,
        },
        "shipping_address": _shopify_address(o.get("shipping_address")),
        "billing_address": _shopify_address(o.get("billing_address")),
        "payment": {
            "gateway": str(gateways[0]) if gateways else (o.get("gateway") or ""),
            "avs_result": pd.get("avs_result_code") or "",
            "cvv_result": pd.get("cvv_result_code") or "",
            "card_bin": pd.get("credit_card_bin") or "",
            "card_last4": card_number[-4:] if card_number else "",
        },
        "client": {
            "browser_ip": client.get("browser_ip") or o.get("browser_ip") or "",
            "user_agent": client.get("user_agent") or "",
        },
        "tags": _tags(o.get("tags")),
        "skipped_lines": skipped,
        "intake_notes": notes,
        "test": o.get("test") is True,
        "payment_status": str(o.get("financial_status") or ""),
        "shipping_method": shipping_method_of(o.get("shipping_lines"), "title", "code"),
    }
