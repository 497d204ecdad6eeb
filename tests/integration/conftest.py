"""Fixtures several integration modules share: the sandbox storefront (Shopify Admin API and a
custom store's webhook endpoint) and settings that name it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.storefront import SandboxStorefrontServer

TOKEN = "shpat_acme_admin_token"
HOOK_SECRET = "custom-store-secret"


@pytest.fixture(scope="module")
def storefront() -> Iterator[SandboxStorefrontServer]:
    with SandboxStorefrontServer(tokens={"acme": TOKEN}, secrets={"custom": HOOK_SECRET}) as s:
        yield s


@pytest.fixture
def shop_settings(db, broker, storefront, monkeypatch) -> Iterator[Any]:
    """Configuration naming the sandbox storefront, for this process and its stages."""
    from config.settings import get_settings

    storefront.state.reset()
    env = {
        "ORDERFLEET_SHOPIFY_ADMIN_TOKENS": json.dumps({"acme": TOKEN}),
        "ORDERFLEET_SHOPIFY_ADMIN_URL": f"{storefront.url}/{{shop}}",
        "ORDERFLEET_STORE_SECRETS": json.dumps({"custom": HOOK_SECRET}),
        "ORDERFLEET_STORE_WEBHOOK_URLS": json.dumps({"custom": f"{storefront.url}/hooks/custom"}),
        "ORDERFLEET_PUSHBACK_RETRY_MAX_S": "1.5",
        "ORDERFLEET_PUSHBACK_TIMEOUT_S": "2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
