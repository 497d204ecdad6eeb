"""Telling the store: Shopify fulfilments and a generic signed webhook for custom storefronts.

Both adapters are safe to call again after a timeout, which is what makes push-back
idempotent end to end:

* :class:`ShopifyAdmin` (the Admin GraphQL API's fulfillment-order mutations) creates a
  fulfilment only after looking for one that already carries the tracking number; Shopify
  itself refuses a second fulfilment of a closed fulfilment order, and a tracking event is
  created only when the fulfilment has no event of that status.
* :class:`SignedWebhook` sends a stable ``X-Orderfleet-Event-Id`` per (order, event): the
  receiver de-duplicates on it, as we do on Shopify's event ids.

Calls go through the project's one retrying client (``domain.http``): transport errors, 5xx
and 429 are retried (exponential backoff with jitter, ``Retry-After`` honoured) within a time
budget; then :class:`StorefrontUnavailable` says "try later". A 4xx is
:class:`StorefrontRejected`: retrying the same request will not help.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from domain.http import HttpRejected, HttpUnavailable, RetryingClient
from domain.platforms import sign_body

log = logging.getLogger(__name__)

# Carrier code -> (tracking company as the store shows it, tracking page URL template).
CARRIER_TRACKING: dict[str, tuple[str, str]] = {
    "sbx-post": ("SBX Post", "https://track.sbx-post.example/parcels/{number}"),
    "sbx-air": ("SBX Air Express", "https://track.sbx-air.example/t/{number}"),
}

# Our carrier tracking statuses -> Shopify fulfillment event statuses.
SHOPIFY_EVENT_STATUS: dict[str, str] = {
    "info_received": "confirmed",
    "in_transit": "in_transit",
    "out_for_delivery": "out_for_delivery",
    "failed_attempt": "attempted_delivery",
    "delivered": "delivered",
    "exception": "failure",
    "expired": "failure",
}


class StorefrontError(Exception):
    """Base class of push-back errors."""


class StorefrontUnavailable(StorefrontError):
    """The store did not answer usefully within the retry budget; try again later."""


class StorefrontRejected(StorefrontError):
    """The store refused the request (4xx); the same request will be refused again."""

    def __init__(self, status_code: int, error: str) -> None:
        super().__init__(f"store rejected the request ({status_code}): {error}")
        self.status_code = status_code
        self.error = error


@dataclass(frozen=True)
class TrackingInfo:
    number: str
    company: str
    url: str | None

    @classmethod
    def for_carrier(cls, carrier: str, number: str) -> TrackingInfo:
        company, template = CARRIER_TRACKING.get(carrier, (carrier, ""))
        return cls(number, company, template.format(number=number) if template else None)

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "company": self.company, "url": self.url}


class _Transport:
    """Push-back calls over the project's one retrying client, in push-back's terms."""

    def __init__(self, timeout_s: float, retry_max_s: float, headers: dict[str, str]) -> None:
        self._client = RetryingClient(name="store", timeout_s=timeout_s,
                                      retry_max_s=retry_max_s, headers=headers)

    def call(self, method: str, url: str, *, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            response = self._client.request(method, url, content=body, headers=headers)
        except HttpRejected as exc:
            raise StorefrontRejected(exc.status_code, exc.error) from None
        except HttpUnavailable as exc:
            raise StorefrontUnavailable(str(exc)) from exc.cause
        assert response is not None  # no 404 is allowed through
        return response

    def close(self) -> None:
        self._client.close()


def shopify_gid(kind: str, value: str | int) -> str:
    """A Shopify Admin GraphQL global id (``gid://shopify/Order/123``); a gid is kept as is."""
    text = str(value)
    return text if text.startswith("gid://") else f"gid://shopify/{kind}/{text}"


# The GraphQL documents push-back sends (Shopify Admin GraphQL API, fulfillment orders).
ORDER_FULFILLMENTS = """
query orderFulfillments($id: ID!) {
  order(id: $id) {
    fulfillments(first: 50) { id status trackingInfo(first: 10) { number } }
  }
}"""
ORDER_FULFILLMENT_ORDERS = """
query orderFulfillmentOrders($id: ID!) {
  order(id: $id) {
    fulfillmentOrders(first: 20) { nodes { id status supportedActions { action } } }
  }
}"""
# With their line items: a part of a split order fulfils only its own lines.
ORDER_FULFILLMENT_ORDER_LINES = """
query orderFulfillmentOrderLines($id: ID!) {
  order(id: $id) {
    fulfillmentOrders(first: 20) {
      nodes {
        id status supportedActions { action }
        lineItems(first: 250) { nodes { id sku remainingQuantity } }
      }
    }
  }
}"""
FULFILLMENT_CREATE = """
mutation fulfillmentCreate($fulfillment: FulfillmentInput!) {
  fulfillmentCreate(fulfillment: $fulfillment) {
    fulfillment { id status }
    userErrors { field message }
  }
}"""
FULFILLMENT_EVENTS = """
query fulfillmentEvents($id: ID!) {
  fulfillment(id: $id) { events(first: 50) { nodes { id status } } }
}"""
FULFILLMENT_EVENT_CREATE = """
mutation fulfillmentEventCreate($fulfillmentEvent: FulfillmentEventInput!) {
  fulfillmentEventCreate(fulfillmentEvent: $fulfillmentEvent) {
    fulfillmentEvent { id status }
    userErrors { field message }
  }
}"""


def _line_items_by_fulfillment_order(order_id: str, fos: list[dict[str, Any]],
                                     line_items: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """``lineItemsByFulfillmentOrder`` for these (sku, quantity): each unit from an open
    fulfilment order line of its SKU with units remaining. Refused (4xx: a person looks) when
    the shop's order has not that many units of a SKU left to fulfil."""
    wanted: dict[str, int] = {}
    for sku, qty in line_items:
        wanted[sku] = wanted.get(sku, 0) + qty
    chosen: dict[str, list[dict[str, Any]]] = {}
    for fo in fos:
        for li in (fo.get("lineItems") or {}).get("nodes", []):
            need = wanted.get(str(li.get("sku") or ""), 0)
            take = min(need, int(li.get("remainingQuantity") or 0))
            if take > 0:
                chosen.setdefault(fo["id"], []).append({"id": li["id"], "quantity": take})
                wanted[str(li["sku"])] = need - take
    short = {sku: n for sku, n in wanted.items() if n > 0}
    if short:
        raise StorefrontRejected(422, f"order {order_id} has no open fulfillment order line "
                                      f"for {short}")
    return [{"fulfillmentOrderId": fo_id, "fulfillmentOrderLineItems": items}
            for fo_id, items in chosen.items()]


class ShopifyAdmin:
    """Push-back through the Shopify Admin GraphQL API (the REST Admin API is legacy for new
    apps): ``order.fulfillmentOrders``, ``fulfillmentCreate`` with ``trackingInfo``, and
    ``fulfillmentEventCreate`` for tracking news. Ids are GraphQL global ids."""

    def __init__(self, shop_url: str, token: str, api_version: str, *, timeout_s: float = 10.0,
                 retry_max_s: float = 20.0) -> None:
        self.endpoint = f"{shop_url.rstrip('/')}/admin/api/{api_version}/graphql.json"
        self._t = _Transport(timeout_s, retry_max_s, {"X-Shopify-Access-Token": token,
                                                     "Accept": "application/json"})

    def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Run one document; top-level errors become Storefront* errors (throttling: retry)."""
        body = json.dumps({"query": query, "variables": variables}).encode()
        answer = self._t.call("POST", self.endpoint, body=body,
                              headers={"Content-Type": "application/json"}).json()
        errors = answer.get("errors") if isinstance(answer, dict) else None
        if errors:
            codes = {str((e.get("extensions") or {}).get("code", "")) for e in errors
                     if isinstance(e, dict)}
            message = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e)
                                for e in errors)
            if "THROTTLED" in codes:
                raise StorefrontUnavailable(f"Shopify GraphQL throttled: {message}")
            raise StorefrontRejected(200, message)
        data: dict[str, Any] = answer.get("data") or {}
        return data

    @staticmethod
    def _user_errors(payload: dict[str, Any] | None) -> str | None:
        errors = (payload or {}).get("userErrors") or []
        return "; ".join(f"{'.'.join(e.get('field') or [])}: {e.get('message')}"
                         for e in errors) or None

    def find_fulfillment(self, order_id: str, tracking_number: str) -> str | None:
        """The gid of the order's fulfilment that carries this tracking number, if any."""
        order = self.graphql(ORDER_FULFILLMENTS, {"id": shopify_gid("Order", order_id)})["order"]
        if order is None:
            raise StorefrontRejected(404, f"order {order_id} not found in the shop")
        for f in order.get("fulfillments") or []:
            numbers = {t.get("number") for t in f.get("trackingInfo") or []}
            if tracking_number in numbers and f.get("status") != "CANCELLED":
                return str(f["id"])
        return None

    def ensure_fulfillment(self, order_id: str, tracking: TrackingInfo, *,
                           notify_customer: bool = True,
                           line_items: list[tuple[str, int]] | None = None) -> str:
        """Fulfil the order's open fulfilment orders with this tracking; return the gid.

        ``line_items`` ((sku, quantity), a part of a split order): only those units are
        fulfilled, taken from the open fulfilment order lines of the same SKU; without it,
        everything open is. Looks first, so a retry after a lost response adopts the
        fulfilment it created.
        """
        existing = self.find_fulfillment(order_id, tracking.number)
        if existing:
            return existing
        query = ORDER_FULFILLMENT_ORDERS if line_items is None else ORDER_FULFILLMENT_ORDER_LINES
        order = self.graphql(query, {"id": shopify_gid("Order", order_id)})["order"] or {}
        open_fos = [fo for fo in (order.get("fulfillmentOrders") or {}).get("nodes", [])
                    if fo.get("status") in ("OPEN", "IN_PROGRESS")
                    and "CREATE_FULFILLMENT" in {a.get("action")
                                                 for a in fo.get("supportedActions") or []}]
        if not open_fos:
            raise StorefrontRejected(422, f"order {order_id} has no open fulfillment order")
        by_fo: list[dict[str, Any]] = [{"fulfillmentOrderId": fo["id"]} for fo in open_fos]
        if line_items is not None:
            by_fo = _line_items_by_fulfillment_order(order_id, open_fos, line_items)
        tracking_input = {"number": tracking.number, "company": tracking.company}
        if tracking.url:
            tracking_input["url"] = tracking.url
        created = self.graphql(FULFILLMENT_CREATE, {"fulfillment": {
            "lineItemsByFulfillmentOrder": by_fo,
            "trackingInfo": tracking_input,
            "notifyCustomer": notify_customer,
        }})["fulfillmentCreate"]
        problem = self._user_errors(created)
        if problem or not (created or {}).get("fulfillment"):
            # Another attempt may have fulfilled it between our look and our create.
            existing = self.find_fulfillment(order_id, tracking.number)
            if existing:
                return existing
            raise StorefrontRejected(422, problem or "fulfillmentCreate returned no fulfillment")
        return str(created["fulfillment"]["id"])

    def add_event(self, order_id: str, fulfillment_id: str, status: str,
                  happened_at: datetime | None = None) -> str:
        """Create a fulfilment event of ``status`` unless the fulfilment already has one."""
        fid = shopify_gid("Fulfillment", fulfillment_id)
        wanted = status.upper()
        found = self.graphql(FULFILLMENT_EVENTS, {"id": fid})["fulfillment"]
        if found is None:
            raise StorefrontRejected(404, f"fulfillment {fid} of order {order_id} not found")
        for ev in (found.get("events") or {}).get("nodes", []):
            if ev.get("status") == wanted:
                return str(ev["id"])
        event: dict[str, Any] = {"fulfillmentId": fid, "status": wanted}
        if happened_at is not None:
            event["happenedAt"] = happened_at.isoformat()
        created = self.graphql(FULFILLMENT_EVENT_CREATE,
                               {"fulfillmentEvent": event})["fulfillmentEventCreate"]
        problem = self._user_errors(created)
        if problem or not (created or {}).get("fulfillmentEvent"):
            raise StorefrontRejected(422, problem or "no fulfillment event created")
        return str(created["fulfillmentEvent"]["id"])

    def close(self) -> None:
        self._t.close()


class SignedWebhook:
    """POSTs orderfleet's own event JSON to a custom storefront, signed with its secret.

    Headers: ``X-Orderfleet-Topic``, ``X-Orderfleet-Event-Id`` (stable per order and event: the
    receiver's de-duplication key) and ``X-Orderfleet-Signature``, the base64 HMAC-SHA256 of the
    raw body with the store's secret (the scheme Shopify and WooCommerce use).
    """

    def __init__(self, url: str, secret: str, *, timeout_s: float = 10.0,
                 retry_max_s: float = 20.0) -> None:
        self.url = url
        self._secret = secret
        self._t = _Transport(timeout_s, retry_max_s, {})

    def send(self, event_id: str, topic: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        self._t.call("POST", self.url, body=body, headers={
            "Content-Type": "application/json",
            "X-Orderfleet-Topic": topic,
            "X-Orderfleet-Event-Id": event_id,
            "X-Orderfleet-Signature": sign_body(self._secret, body),
        })

    def close(self) -> None:
        self._t.close()
