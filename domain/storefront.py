"""Telling the store: Shopify fulfilments and a generic signed webhook for custom storefronts.

Both adapters are safe to call again after a timeout, which is what makes push-back
idempotent end to end:

* :class:`ShopifyAdmin` creates a fulfilment only after looking for one that already carries
  the tracking number; Shopify itself refuses a second fulfilment of a closed fulfilment
  order, and a tracking event is posted only when the fulfilment has no event of that status.
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


class ShopifyAdmin:
    """The Shopify Admin REST calls push-back needs (fulfilment orders, fulfilments, events)."""

    def __init__(self, shop_url: str, token: str, api_version: str, *, timeout_s: float = 10.0,
                 retry_max_s: float = 20.0) -> None:
        self.api = f"{shop_url.rstrip('/')}/admin/api/{api_version}"
        self._t = _Transport(timeout_s, retry_max_s, {"X-Shopify-Access-Token": token,
                                                     "Accept": "application/json"})

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else None
        return self._t.call(method, f"{self.api}{path}", body=body, headers=headers).json()

    def find_fulfillment(self, order_id: str, tracking_number: str) -> str | None:
        """The id of the order's fulfilment that carries this tracking number, if any."""
        body = self._json("GET", f"/orders/{order_id}/fulfillments.json")
        for f in body.get("fulfillments", []):
            numbers = set(f.get("tracking_numbers") or []) | {f.get("tracking_number")}
            if tracking_number in numbers and f.get("status") != "cancelled":
                return str(f["id"])
        return None

    def ensure_fulfillment(self, order_id: str, tracking: TrackingInfo, *,
                           notify_customer: bool = True) -> str:
        """Fulfil the order's open fulfilment orders with this tracking; return the id.

        Looks first, so a retry after a lost response adopts the fulfilment it created.
        """
        existing = self.find_fulfillment(order_id, tracking.number)
        if existing:
            return existing
        fos = self._json("GET", f"/orders/{order_id}/fulfillment_orders.json")
        open_fos = [fo for fo in fos.get("fulfillment_orders", [])
                    if fo.get("status") in ("open", "in_progress")
                    and "create_fulfillment" in (fo.get("supported_actions") or [])]
        if not open_fos:
            raise StorefrontRejected(422, f"order {order_id} has no open fulfillment order")
        payload = {"fulfillment": {
            "line_items_by_fulfillment_order": [{"fulfillment_order_id": fo["id"]}
                                                for fo in open_fos],
            "tracking_info": tracking.to_json(),
            "notify_customer": notify_customer,
        }}
        try:
            body = self._json("POST", "/fulfillments.json", payload)
        except StorefrontRejected:
            # Another attempt may have fulfilled it between our look and our create.
            existing = self.find_fulfillment(order_id, tracking.number)
            if existing:
                return existing
            raise
        return str(body["fulfillment"]["id"])

    def add_event(self, order_id: str, fulfillment_id: str, status: str,
                  happened_at: datetime | None = None) -> str:
        """Post a fulfilment event of ``status`` unless the fulfilment already has one."""
        path = f"/orders/{order_id}/fulfillments/{fulfillment_id}/events.json"
        for ev in self._json("GET", path).get("fulfillment_events", []):
            if ev.get("status") == status:
                return str(ev["id"])
        event: dict[str, Any] = {"status": status}
        if happened_at is not None:
            event["happened_at"] = happened_at.isoformat()
        return str(self._json("POST", path, {"event": event})["fulfillment_event"]["id"])

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
