"""The order schema (pydantic v2) and the mapping of a Shopify REST order onto it.

Two input shapes are accepted: the native schema below, and a Shopify ``orders/paid`` webhook
body as Shopify sends it (recognised by its ``line_items``). Both become an ``Order``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
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

Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)]


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
    sku: NonEmpty
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
    # The shipping method the customer chose (Shopify shipping_lines title, WooCommerce
    # method_title): an express method puts the order in the express lane.
    shipping_method: str = Field("", max_length=255)

    @field_validator("paid_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _totals_add_up(self) -> Order:
        lines_total = sum((line.unit_price * line.quantity for line in self.lines), Decimal("0"))
        # Line prices before discount should match the subtotal within a cent per line.
        if abs(lines_total - self.totals.subtotal) > Decimal("0.01") * len(self.lines):
            raise ValueError(
                f"totals.subtotal {self.totals.subtotal} does not match the lines ({lines_total})"
            )
        return self

    @property
    def weight_g(self) -> int:
        return sum(line.weight_g * line.quantity for line in self.lines)


class OrderValidationError(ValueError):
    """Raised for a payload that cannot become an Order; ``errors`` names each failing field."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


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
    try:
        return Order.model_validate(data)
    except ValidationError as exc:
        raise OrderValidationError(_errors_from(exc)) from None


# --------------------------------------------------------------------------------------------
# Shopify REST order -> native
# --------------------------------------------------------------------------------------------


def _shopify_address(a: dict[str, Any] | None) -> dict[str, Any] | None:
    if not a:
        return None
    name = a.get("name") or " ".join(p for p in (a.get("first_name"), a.get("last_name")) if p)
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


def shopify_to_native(o: dict[str, Any], *, store: str | None = None) -> dict[str, Any]:
    """Map a Shopify REST Admin order object (webhook body) onto the native schema.

    Missing or malformed values are passed through as they are so that validation reports
    them by their native field name.
    """
    customer = o.get("customer") or {}
    pd = o.get("payment_details") or {}
    card_number = str(pd.get("credit_card_number") or "")
    gateways = o.get("payment_gateway_names") or []
    lines = []
    for li in o.get("line_items") or []:
        if not isinstance(li, dict):
            lines.append(li)
            continue
        props = {}
        for p in li.get("properties") or []:
            if isinstance(p, dict) and p.get("name"):
                props[str(p["name"])] = str(p.get("value", ""))
        lines.append(
            {
                "sku": li.get("sku") or "",
                "quantity": li.get("quantity"),
                "unit_price": li.get("price"),
                "weight_g": li.get("grams") or 0,
                "title": li.get("title") or "",
                "properties": props,
            }
        )
    shipping = sum(
        (Decimal(str(s.get("price", "0"))) for s in o.get("shipping_lines") or []
         if isinstance(s, dict)),
        Decimal("0"),
    )
    created = customer.get("created_at")
    return {
        "order_id": str(o.get("id", "")),
        "store": store or o.get("store") or "",
        "source": "shopify",
        "paid_at": o.get("processed_at") or o.get("created_at"),
        "customer": {
            "id": str(customer.get("id", "")) or (o.get("email") or ""),
            "email": customer.get("email") or o.get("email") or o.get("contact_email") or "",
            "first_order_at": created,
            "order_count": customer.get("orders_count") or 0,
            "tags": _tags(customer.get("tags")),
        },
        "lines": lines,
        "currency": o.get("currency") or "",
        "totals": {
            "subtotal": o.get("total_line_items_price") or o.get("subtotal_price"),
            "shipping": shipping,
            "tax": o.get("total_tax") or "0",
            "discount": o.get("total_discounts") or "0",
            "total": o.get("total_price"),
        },
        "shipping_address": _shopify_address(o.get("shipping_address")),
        "billing_address": _shopify_address(o.get("billing_address")),
        "payment": {
            "gateway": gateways[0] if gateways else (o.get("gateway") or ""),
            "avs_result": pd.get("avs_result_code") or "",
            "cvv_result": pd.get("cvv_result_code") or "",
            "card_bin": pd.get("credit_card_bin") or "",
            "card_last4": card_number[-4:] if card_number else "",
        },
        "client": {
            "browser_ip": (o.get("client_details") or {}).get("browser_ip") or o.get("browser_ip")
            or "",
            "user_agent": (o.get("client_details") or {}).get("user_agent") or "",
        },
        "tags": _tags(o.get("tags")),
        "shipping_method": shipping_method_of(o.get("shipping_lines"), "title", "code"),
    }
