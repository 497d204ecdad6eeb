"""Push-back's Shopify Admin GraphQL client against the sandbox storefront's GraphQL dialect."""

from __future__ import annotations

import httpx
import pytest

from domain.storefront import (
    FULFILLMENT_CREATE,
    ShopifyAdmin,
    StorefrontRejected,
    TrackingInfo,
)
from sandbox.storefront import SandboxStorefrontServer

TOKEN = "shpat_graphql_test_token"


def test_fulfil_once_adopt_on_retry_and_one_event_per_status() -> None:
    with SandboxStorefrontServer(tokens={"acme": TOKEN}) as storefront:
        admin = ShopifyAdmin(f"{storefront.url}/acme", TOKEN, "2025-01", retry_max_s=1)
        tracking = TrackingInfo.for_carrier("sbx-post", "SBX123")
        first = admin.ensure_fulfillment("1001", tracking)
        assert first.startswith("gid://shopify/Fulfillment/")
        # A retry after a lost answer adopts the fulfilment instead of creating another
        assert admin.ensure_fulfillment("1001", tracking) == first
        (ful,) = storefront.state.fulfillments[("acme", "1001")]
        assert ful["tracking_numbers"] == ["SBX123"] and ful["via"] == "graphql"
        # Another tracking number once the fulfilment order is closed: refused, not retried
        with pytest.raises(StorefrontRejected, match="no open fulfillment order"):
            admin.ensure_fulfillment("1001", TrackingInfo.for_carrier("sbx-post", "OTHER"))
        # ... and Shopify's own answer to a create on a closed one is userErrors, not a 4xx
        fo = storefront.state.fulfillment_orders[("acme", "1001")]
        again = admin.graphql(FULFILLMENT_CREATE, {"fulfillment": {
            "lineItemsByFulfillmentOrder": [
                {"fulfillmentOrderId": f"gid://shopify/FulfillmentOrder/{fo['id']}"}]}})
        assert again["fulfillmentCreate"]["fulfillment"] is None
        assert "unfulfillable status" in again["fulfillmentCreate"]["userErrors"][0]["message"]
        event = admin.add_event("1001", first, "in_transit")
        assert admin.add_event("1001", first, "in_transit") == event
        assert [e["status"] for e in storefront.state.events[str(ful["id"])]] == ["in_transit"]
        admin.close()


def test_the_sandbox_validates_documents_against_the_schema() -> None:
    with SandboxStorefrontServer(tokens={"acme": TOKEN}) as storefront:
        url = f"{storefront.url}/acme/admin/api/2025-01/graphql.json"
        headers = {"X-Shopify-Access-Token": TOKEN}
        wrong = httpx.post(url, headers=headers, json={
            "query": "mutation { fulfillmentCreate(fulfillment: {notifyCustomer: true}) "
                     "{ userErrors { message } } }"})
        assert wrong.status_code == 200
        assert "lineItemsByFulfillmentOrder" in wrong.json()["errors"][0]["message"]
        unknown = httpx.post(url, headers=headers, json={"query": "{ shop { name } }"})
        assert "Cannot query field 'shop'" in unknown.json()["errors"][0]["message"]
        assert httpx.post(url, json={"query": "{ __typename }"}).status_code == 401
        admin = ShopifyAdmin(f"{storefront.url}/acme", TOKEN, "2025-01", retry_max_s=1)
        with pytest.raises(StorefrontRejected, match="not found"):
            admin.add_event("1001", "gid://shopify/Fulfillment/1", "delivered")
        admin.close()
