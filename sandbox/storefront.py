"""A sandbox storefront: a real HTTP server standing in for the stores orderfleet talks to.

It plays both ends of a store's integration:

* **receiving push-back**: the Shopify Admin GraphQL endpoint push-back uses
  (``/{shop}/admin/api/{version}/graphql.json``, :mod:`sandbox.shopify_graphql`) and the legacy
  REST endpoints, per shop under ``/{shop}/admin/api/{version}/`` (so
  ``ORDERFLEET_SHOPIFY_ADMIN_URL=http://host:port/{shop}``):
  fulfilment orders (one per order, created on first sight), fulfilments (a closed fulfilment
  order refuses a second one with 422, as Shopify does) and fulfilment events; and a generic
  webhook receiver at ``POST /hooks/{store}`` that checks ``X-Orderfleet-Signature``.
* **sending webhooks**: :func:`shopify_headers` / :func:`woocommerce_headers` sign bodies the
  way Shopify and WooCommerce do, for tests, the demo and the load generator.

``POST /marketing/{store}/members`` stands in for a store's marketing list (orderfleet's
non-core marketing sync), deduplicated by ``Idempotency-Key``.

Everything received is recorded (``GET /_sandbox/received``). Failures on purpose:
``POST /_sandbox/fail {"status": 503, "times": 2, "path_contains": "fulfillments"}`` makes the
next two matching requests fail (``"retry_after": 1`` adds the header). ``POST /_sandbox/reset``
forgets everything. Run it with ``python -m sandbox.storefront --port 8766``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from domain.platforms import sign_body, signature_matches
from sandbox.shopify_graphql import execute as execute_graphql
from sandbox.threaded_server import ThreadedServer

SHOPIFY_EVENT_STATUSES = frozenset({
    "attempted_delivery", "carrier_picked_up", "confirmed", "delayed", "delivered", "failure",
    "in_transit", "label_printed", "label_purchased", "out_for_delivery", "picked_up",
    "ready_for_pickup",
})


def shopify_headers(secret: str, body: bytes, topic: str, shop: str, *,
                    event_id: str | None = None, triggered_at: datetime | None = None,
                    webhook_id: str | None = None) -> dict[str, str]:
    """The headers Shopify sends with a webhook, signed with the app's secret."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign_body(secret, body),
        "X-Shopify-Shop-Domain": f"{shop}.myshopify.com",
        "X-Shopify-API-Version": "2025-01",
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
        "X-Shopify-Triggered-At": (triggered_at or datetime.now(UTC)).isoformat(),
    }


def woocommerce_headers(secret: str, body: bytes, topic: str, *,
                        delivery_id: str | None = None) -> dict[str, str]:
    """The headers WooCommerce sends with an ``order.*`` webhook."""
    resource, _, event = topic.partition(".")
    return {
        "Content-Type": "application/json",
        "X-WC-Webhook-Source": "https://shop.example/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": sign_body(secret, body),
        "X-WC-Webhook-ID": "7",
        "X-WC-Webhook-Delivery-ID": delivery_id or uuid.uuid4().hex,
    }


@dataclass
class _Failure:
    status: int
    times: int
    path_contains: str = ""
    retry_after: float | None = None


@dataclass
class StorefrontState:
    tokens: dict[str, str]  # shop -> Admin API token (empty: any non-empty token is accepted)
    secrets: dict[str, str]  # store -> push-back webhook secret
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: list[dict[str, Any]] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    fulfillment_orders: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    fulfillments: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    webhooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Marketing-list members per store, by Idempotency-Key (a repeated call changes nothing).
    marketing: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(9_000_000_001))
    # The lines (sku, quantity) of orders a test placed in the shop (``add_order``); an order
    # the shop was not told of gets one fulfilment order line of one unit.
    order_lines: dict[tuple[str, str], list[tuple[str, int]]] = field(default_factory=dict)

    def reset(self) -> None:
        with self.lock:
            for store in (self.received, self.failures):
                store.clear()
            for d in (self.fulfillment_orders, self.fulfillments, self.events, self.webhooks,
                      self.marketing, self.order_lines):
                d.clear()

    def add_order(self, shop: str, order_id: str, lines: list[tuple[str, int]]) -> None:
        """Place an order in the shop with these lines: its fulfilment order lists them."""
        with self.lock:
            self.order_lines[(shop, order_id)] = list(lines)

    def fulfillment_order(self, shop: str, order_id: str) -> dict[str, Any]:
        key = (shop, order_id)
        if key not in self.fulfillment_orders:
            self.fulfillment_orders[key] = {
                "id": next(self.ids), "order_id": int(order_id) if order_id.isdigit() else
                order_id, "status": "open", "supported_actions": ["create_fulfillment"],
                "line_items": [{"id": next(self.ids), "sku": sku, "quantity": qty,
                                "fulfillable_quantity": qty}
                               for sku, qty in self.order_lines.get(key, [(None, 1)])],
            }
        return self.fulfillment_orders[key]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def create_app(tokens: dict[str, str] | None = None,
               secrets: dict[str, str] | None = None) -> Starlette:
    """Build the sandbox storefront (tokens per shop, webhook secrets per store)."""
    state = StorefrontState(tokens=dict(tokens or {}), secrets=dict(secrets or {}))

    async def record(request: Request) -> tuple[bytes, Response | None]:
        """Record the request; return an injected failure response when one is armed."""
        body = await request.body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        with state.lock:
            state.received.append({"method": request.method, "path": request.url.path,
                                   "headers": dict(request.headers), "json": parsed,
                                   "at": time.time()})
            for f in state.failures:
                if f.times > 0 and f.path_contains in request.url.path:
                    f.times -= 1
                    headers = {"Retry-After": str(f.retry_after)} if f.retry_after else None
                    return body, JSONResponse({"errors": "injected failure"},
                                              status_code=f.status, headers=headers)
        return body, None

    def authorised(request: Request, shop: str) -> bool:
        token = request.headers.get("x-shopify-access-token", "")
        expected = state.tokens.get(shop)
        return bool(token) and (expected is None and not state.tokens or token == expected)

    async def shopify(request: Request) -> Response:
        _, failed = await record(request)
        if failed is not None:
            return failed
        shop = request.path_params["shop"]
        if not authorised(request, shop):
            return JSONResponse({"errors": "[API] Invalid API key or access token"}, 401)
        rest = request.path_params["rest"]
        parts = rest.removesuffix(".json").split("/")
        if request.method == "POST" and parts == ["graphql"]:
            try:
                body = await request.json()
            except ValueError:
                body = None
            with state.lock:
                return JSONResponse(execute_graphql(state, shop, body))
        with state.lock:
            if request.method == "GET" and len(parts) == 3 and parts[0] == "orders" \
                    and parts[2] == "fulfillment_orders":
                return JSONResponse({"fulfillment_orders": [
                    state.fulfillment_order(shop, parts[1])]})
            if request.method == "GET" and len(parts) == 3 and parts[2] == "fulfillments":
                return JSONResponse({"fulfillments":
                                     state.fulfillments.get((shop, parts[1]), [])})
            if request.method == "POST" and parts == ["fulfillments"]:
                return create_fulfillment(shop, await request.json())
            if len(parts) == 5 and parts[2] == "fulfillments" and parts[4] == "events":
                fid = parts[3]
                if not any(str(f["id"]) == fid
                           for f in state.fulfillments.get((shop, parts[1]), [])):
                    return JSONResponse({"errors": "Not Found"}, 404)
                if request.method == "GET":
                    return JSONResponse({"fulfillment_events": state.events.get(fid, [])})
                event = (await request.json()).get("event") or {}
                if event.get("status") not in SHOPIFY_EVENT_STATUSES:
                    return JSONResponse({"errors": {"status": ["is not included in the list"]}},
                                        422)
                ev = {"id": next(state.ids), "fulfillment_id": int(fid),
                      "status": event["status"], "happened_at": event.get("happened_at")
                      or _now(), "created_at": _now()}
                state.events.setdefault(fid, []).append(ev)
                return JSONResponse({"fulfillment_event": ev}, 201)
        return JSONResponse({"errors": "Not Found"}, 404)

    def create_fulfillment(shop: str, body: Any) -> Response:
        f = body.get("fulfillment") if isinstance(body, dict) else None
        if not isinstance(f, dict) or not f.get("line_items_by_fulfillment_order"):
            return JSONResponse({"errors": {"line_items_by_fulfillment_order": ["required"]}},
                                422)
        items = f["line_items_by_fulfillment_order"]
        fos = [fo for fo in state.fulfillment_orders.values()
               if any(fo["id"] == i.get("fulfillment_order_id") for i in items)]
        if len(fos) != len(items):
            return JSONResponse({"errors": "Fulfillment order does not exist"}, 404)
        if any(fo["status"] != "open" for fo in fos):
            return JSONResponse({"errors": ["Fulfillment order is closed"]}, 422)
        tracking = f.get("tracking_info") or {}
        order_id = str(fos[0]["order_id"])
        ful = {"id": next(state.ids), "order_id": fos[0]["order_id"], "status": "success",
               "created_at": _now(), "tracking_company": tracking.get("company"),
               "tracking_number": tracking.get("number"),
               "tracking_numbers": [tracking["number"]] if tracking.get("number") else [],
               "tracking_url": tracking.get("url"),
               "tracking_urls": [tracking["url"]] if tracking.get("url") else [],
               "notify_customer": bool(f.get("notify_customer"))}
        for fo in fos:
            fo["status"], fo["supported_actions"] = "closed", []
        state.fulfillments.setdefault((shop, order_id), []).append(ful)
        return JSONResponse({"fulfillment": ful}, 201)

    async def hook(request: Request) -> Response:
        body, failed = await record(request)
        if failed is not None:
            return failed
        store = request.path_params["store"]
        secret = state.secrets.get(store)
        if secret is None or not signature_matches(
                secret, body, request.headers.get("x-orderfleet-signature")):
            return JSONResponse({"error": "bad signature"}, 401)
        event_id = request.headers.get("x-orderfleet-event-id", "")
        with state.lock:
            seen = state.webhooks.setdefault(store, [])
            if any(w["event_id"] == event_id for w in seen):
                return JSONResponse({"status": "duplicate"})
            seen.append({"event_id": event_id, "topic": request.headers.get(
                "x-orderfleet-topic"), "json": json.loads(body)})
        return JSONResponse({"status": "ok"})

    async def marketing(request: Request) -> Response:
        """A store's marketing list (a newsletter/CRM audience): add a member, idempotently."""
        body, failed = await record(request)
        if failed is not None:
            return failed
        key = request.headers.get("idempotency-key", "")
        try:
            member = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "not JSON"}, 400)
        if not key or not isinstance(member, dict) or "@" not in str(member.get("email", "")):
            return JSONResponse({"error": "Idempotency-Key and an email are required"}, 422)
        with state.lock:
            members = state.marketing.setdefault(request.path_params["store"], {})
            if key in members:
                return JSONResponse({"status": "duplicate"})
            members[key] = member
        return JSONResponse({"status": "added"}, 201)

    async def marketing_list(request: Request) -> Response:
        with state.lock:
            return JSONResponse(state.marketing.get(request.path_params["store"], {}))

    async def fail(request: Request) -> Response:
        spec = await request.json()
        with state.lock:
            state.failures.append(_Failure(int(spec.get("status", 503)),
                                           int(spec.get("times", 1)),
                                           str(spec.get("path_contains", "")),
                                           spec.get("retry_after")))
        return JSONResponse({"ok": True})

    async def received(request: Request) -> Response:
        with state.lock:
            return JSONResponse({"received": state.received})

    async def snapshot(request: Request) -> Response:
        with state.lock:
            return JSONResponse({
                "fulfillments": {f"{s}/{o}": v for (s, o), v in state.fulfillments.items()},
                "events": state.events,
                "webhooks": state.webhooks,
            })

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/_sandbox/fail", fail, methods=["POST"]),
        Route("/_sandbox/received", received, methods=["GET"]),
        Route("/_sandbox/state", snapshot, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/hooks/{store}", hook, methods=["POST"]),
        Route("/marketing/{store}/members", marketing, methods=["POST"]),
        Route("/marketing/{store}/members", marketing_list, methods=["GET"]),
        Route("/{shop}/admin/api/{version}/{rest:path}", shopify, methods=["GET", "POST"]),
    ])
    app.state.storefront = state
    return app


class SandboxStorefrontServer(ThreadedServer):
    """The sandbox storefront in a background thread (tests, demo)."""

    def __init__(self, tokens: dict[str, str] | None = None,
                 secrets: dict[str, str] | None = None, port: int = 0) -> None:
        super().__init__(create_app(tokens, secrets), port=port)

    @property
    def state(self) -> StorefrontState:
        return self.app_state("storefront", StorefrontState)

    def fail_next(self, status: int = 503, times: int = 1, path_contains: str = "",
                  retry_after: float | None = None) -> None:
        with self.state.lock:
            self.state.failures.append(_Failure(status, times, path_contains, retry_after))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the orderfleet sandbox storefront.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--tokens", default="{}", help='JSON {"shop": "admin token"}')
    parser.add_argument("--secrets", default="{}", help='JSON {"store": "webhook secret"}')
    args = parser.parse_args(argv)
    uvicorn.run(create_app(json.loads(args.tokens), json.loads(args.secrets)), host=args.host,
                port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
