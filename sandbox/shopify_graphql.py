"""The sandbox storefront's Shopify Admin GraphQL dialect: the subset push-back uses
(``order.fulfillmentOrders``, ``order.fulfillments``, ``fulfillment.events``,
``fulfillmentCreate``, ``fulfillmentEventCreate``), parsed, validated and executed by
graphql-core over the same in-memory shop state the REST endpoints use.

Field and type names follow shopify.dev's Admin GraphQL reference (FulfillmentInput,
FulfillmentOrderLineItemsInput, FulfillmentTrackingInput, FulfillmentEventInput, userErrors).
Like Shopify, a refused mutation answers HTTP 200 with ``userErrors``; a malformed document
answers 200 with top-level ``errors``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from graphql import GraphQLResolveInfo, build_schema, graphql_sync

SDL = """
scalar DateTime
scalar URL

enum FulfillmentOrderStatus { OPEN IN_PROGRESS CANCELLED INCOMPLETE CLOSED SCHEDULED ON_HOLD }
enum FulfillmentOrderAction { CREATE_FULFILLMENT REQUEST_FULFILLMENT CANCEL_FULFILLMENT_ORDER
  HOLD RELEASE_HOLD MOVE EXTERNAL MARK_AS_OPEN SPLIT MERGE }
enum FulfillmentStatus { SUCCESS CANCELLED ERROR FAILURE OPEN PENDING }
enum FulfillmentEventStatus { ATTEMPTED_DELIVERY CARRIER_PICKED_UP CONFIRMED DELAYED DELIVERED
  FAILURE IN_TRANSIT LABEL_PRINTED LABEL_PURCHASED OUT_FOR_DELIVERY PICKED_UP
  READY_FOR_PICKUP }

type FulfillmentOrderSupportedAction { action: FulfillmentOrderAction! }
type FulfillmentOrderLineItem {
  id: ID!
  sku: String
  totalQuantity: Int!
  remainingQuantity: Int!
}
type FulfillmentOrderLineItemConnection { nodes: [FulfillmentOrderLineItem!]! }
type FulfillmentOrder {
  id: ID!
  status: FulfillmentOrderStatus!
  supportedActions: [FulfillmentOrderSupportedAction!]!
  lineItems(first: Int): FulfillmentOrderLineItemConnection!
}
type FulfillmentOrderConnection { nodes: [FulfillmentOrder!]! }
type FulfillmentTrackingInfo { number: String company: String url: URL }
type FulfillmentEvent { id: ID! status: FulfillmentEventStatus! happenedAt: DateTime! }
type FulfillmentEventConnection { nodes: [FulfillmentEvent!]! }
type Fulfillment {
  id: ID!
  status: FulfillmentStatus!
  createdAt: DateTime!
  trackingInfo(first: Int): [FulfillmentTrackingInfo!]!
  events(first: Int): FulfillmentEventConnection!
}
type Order {
  id: ID!
  fulfillmentOrders(first: Int): FulfillmentOrderConnection!
  fulfillments(first: Int): [Fulfillment!]!
}
type UserError { field: [String!] message: String! }
type FulfillmentCreatePayload { fulfillment: Fulfillment userErrors: [UserError!]! }
type FulfillmentEventCreatePayload {
  fulfillmentEvent: FulfillmentEvent
  userErrors: [UserError!]!
}

input FulfillmentOrderLineItemInput { id: ID! quantity: Int! }
input FulfillmentOrderLineItemsInput {
  fulfillmentOrderId: ID!
  fulfillmentOrderLineItems: [FulfillmentOrderLineItemInput!]
}
input FulfillmentTrackingInput {
  number: String
  numbers: [String!]
  company: String
  url: URL
  urls: [URL!]
}
input FulfillmentInput {
  lineItemsByFulfillmentOrder: [FulfillmentOrderLineItemsInput!]!
  notifyCustomer: Boolean
  trackingInfo: FulfillmentTrackingInput
}
input FulfillmentEventInput {
  fulfillmentId: ID!
  status: FulfillmentEventStatus!
  happenedAt: DateTime
}

type Query {
  order(id: ID!): Order
  fulfillment(id: ID!): Fulfillment
}
type Mutation {
  fulfillmentCreate(fulfillment: FulfillmentInput!, message: String): FulfillmentCreatePayload
  fulfillmentEventCreate(fulfillmentEvent: FulfillmentEventInput!): FulfillmentEventCreatePayload
}
"""

SCHEMA = build_schema(SDL)


def _gid(kind: str, value: Any) -> str:
    return f"gid://shopify/{kind}/{value}"


def _tail(gid: Any) -> str:
    return str(gid).rsplit("/", 1)[-1]


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ShopGraph:
    """Resolvers over a :class:`sandbox.storefront.StorefrontState` for one shop."""

    def __init__(self, state: Any, shop: str) -> None:
        self.state, self.shop = state, shop

    # --- views ---------------------------------------------------------------------------
    def _fulfillment_order(self, fo: dict[str, Any]) -> dict[str, Any]:
        lines = [{"id": _gid("FulfillmentOrderLineItem", li["id"]), "sku": li.get("sku"),
                  "totalQuantity": li["quantity"], "remainingQuantity": li["fulfillable_quantity"]}
                 for li in fo["line_items"]]
        return {"id": _gid("FulfillmentOrder", fo["id"]), "status": fo["status"].upper(),
                "supportedActions": [{"action": a.upper()} for a in fo["supported_actions"]],
                "lineItems": lambda info, first=None: {"nodes": lines[:first]}}

    def _fulfillment(self, f: dict[str, Any]) -> dict[str, Any]:
        events = self.state.events.get(str(f["id"]), [])
        tracking = [{"number": n, "company": f.get("tracking_company"),
                     "url": (f.get("tracking_urls") or [None])[0]}
                    for n in f.get("tracking_numbers") or []]
        return {"id": _gid("Fulfillment", f["id"]), "status": str(f["status"]).upper(),
                "createdAt": f["created_at"],
                "trackingInfo": lambda info, first=None: tracking[:first],
                "events": lambda info, first=None: {"nodes": [
                    {"id": _gid("FulfillmentEvent", e["id"]), "status": e["status"].upper(),
                     "happenedAt": e["happened_at"]} for e in events][:first]}}

    def _find_fulfillment(self, gid: str) -> dict[str, Any] | None:
        for (shop, _), fulfillments in self.state.fulfillments.items():
            for f in fulfillments:
                if shop == self.shop and str(f["id"]) == _tail(gid):
                    found: dict[str, Any] = f
                    return found
        return None

    # --- root fields ---------------------------------------------------------------------
    def order(self, info: GraphQLResolveInfo, id: str) -> dict[str, Any] | None:
        order_id = _tail(id)
        if not id.startswith("gid://shopify/Order/") or not order_id:
            return None
        return {
            "id": id,
            # One fulfilment order per order, created on first sight (as the REST side does).
            "fulfillmentOrders": lambda info, first=None: {"nodes": [self._fulfillment_order(
                self.state.fulfillment_order(self.shop, order_id))][:first]},
            "fulfillments": lambda info, first=None: [
                self._fulfillment(f) for f in self.state.fulfillments.get(
                    (self.shop, order_id), [])][:first],
        }

    def fulfillment(self, info: GraphQLResolveInfo, id: str) -> dict[str, Any] | None:
        f = self._find_fulfillment(id)
        return None if f is None else self._fulfillment(f)

    def fulfillmentCreate(self, info: GraphQLResolveInfo, fulfillment: dict[str, Any],  # noqa: N802
                          message: str | None = None) -> dict[str, Any]:
        items = fulfillment["lineItemsByFulfillmentOrder"]
        if not items:
            return {"fulfillment": None, "userErrors": [{
                "field": ["fulfillment", "lineItemsByFulfillmentOrder"],
                "message": "must contain at least one fulfillment order"}]}
        wanted = {_tail(i["fulfillmentOrderId"]) for i in items}
        fos = [fo for (shop, _), fo in self.state.fulfillment_orders.items()
               if shop == self.shop and str(fo["id"]) in wanted]
        if len(fos) != len(wanted):
            return {"fulfillment": None, "userErrors": [{
                "field": ["fulfillment"], "message": "Fulfillment order does not exist."}]}
        closed = [fo for fo in fos if fo["status"] not in ("open", "in_progress")]
        if closed:
            return {"fulfillment": None, "userErrors": [{
                "field": ["fulfillment"], "message": f"Fulfillment order {closed[0]['id']} has "
                f"an unfulfillable status= {closed[0]['status']}."}]}
        # Which units: the listed fulfilment order lines, or every unit still open.
        taking: list[tuple[dict[str, Any], int]] = []
        for item in items:
            fo = next(f for f in fos if str(f["id"]) == _tail(item["fulfillmentOrderId"]))
            listed = item.get("fulfillmentOrderLineItems")
            if not listed:
                taking += [(li, li["fulfillable_quantity"]) for li in fo["line_items"]
                           if li["fulfillable_quantity"] > 0]
                continue
            for wanted_line in listed:
                li = next((li for li in fo["line_items"]
                           if str(li["id"]) == _tail(wanted_line["id"])), None)
                if li is None or not 0 < wanted_line["quantity"] <= li["fulfillable_quantity"]:
                    return {"fulfillment": None, "userErrors": [{
                        "field": ["fulfillment", "lineItemsByFulfillmentOrder"],
                        "message": f"Invalid fulfillment order line item quantity requested "
                                   f"for {wanted_line['id']}."}]}
                taking.append((li, wanted_line["quantity"]))
        tracking = fulfillment.get("trackingInfo") or {}
        numbers = [n for n in [tracking.get("number"), *(tracking.get("numbers") or [])] if n]
        urls = [u for u in [tracking.get("url"), *(tracking.get("urls") or [])] if u]
        order_id = str(fos[0]["order_id"])
        ful = {"id": next(self.state.ids), "order_id": fos[0]["order_id"], "status": "success",
               "created_at": _now(), "tracking_company": tracking.get("company"),
               "tracking_number": numbers[0] if numbers else None,
               "tracking_numbers": numbers, "tracking_url": urls[0] if urls else None,
               "tracking_urls": urls, "notify_customer": bool(fulfillment.get("notifyCustomer")),
               "via": "graphql",
               "line_items": [{"sku": li.get("sku"), "quantity": n} for li, n in taking]}
        for li, n in taking:
            li["fulfillable_quantity"] -= n
        for fo in fos:
            # Closed once every unit is fulfilled; in progress while some remain (a split).
            if all(li["fulfillable_quantity"] == 0 for li in fo["line_items"]):
                fo["status"], fo["supported_actions"] = "closed", []
            else:
                fo["status"] = "in_progress"
        self.state.fulfillments.setdefault((self.shop, order_id), []).append(ful)
        return {"fulfillment": self._fulfillment(ful), "userErrors": []}

    def fulfillmentEventCreate(self, info: GraphQLResolveInfo,  # noqa: N802
                               fulfillmentEvent: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        f = self._find_fulfillment(fulfillmentEvent["fulfillmentId"])
        if f is None:
            return {"fulfillmentEvent": None, "userErrors": [{
                "field": ["fulfillmentEvent", "fulfillmentId"],
                "message": "Fulfillment does not exist."}]}
        ev = {"id": next(self.state.ids), "fulfillment_id": f["id"],
              "status": fulfillmentEvent["status"].lower(),
              "happened_at": fulfillmentEvent.get("happenedAt") or _now(), "created_at": _now()}
        self.state.events.setdefault(str(f["id"]), []).append(ev)
        return {"fulfillmentEvent": {"id": _gid("FulfillmentEvent", ev["id"]),
                                     "status": fulfillmentEvent["status"],
                                     "happenedAt": ev["happened_at"]}, "userErrors": []}


def execute(state: Any, shop: str, body: Any) -> dict[str, Any]:
    """One GraphQL request (``{"query", "variables"}``) against the shop; the JSON answer."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return {"errors": [{"message": "Parameter Missing or Invalid: query"}]}
    variables = body.get("variables")
    graph = ShopGraph(state, shop)
    root = {name: getattr(graph, name) for name in
            ("order", "fulfillment", "fulfillmentCreate", "fulfillmentEventCreate")}
    result = graphql_sync(SCHEMA, body["query"], root_value=root,
                          variable_values=variables if isinstance(variables, dict) else None)
    out: dict[str, Any] = {"data": result.data}
    if result.errors:
        out["errors"] = [e.formatted for e in result.errors]
    return out
