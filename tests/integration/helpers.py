"""Small builders shared by the integration tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from domain.db import unit_of_work
from domain.stock import StockLevel, set_stock_levels
from tests.waiting import eventually
from workers.fleet import free_port


def native_order(order_id: str, *, sku: str = "TEE-M", quantity: int = 1, price: str = "20.00",
                 country: str = "US", store: str = "acme", **over: Any) -> dict[str, Any]:
    total = f"{float(price) * quantity:.2f}"
    order = {
        "order_id": order_id, "store": store, "paid_at": "2026-11-27T10:00:00Z",
        "customer": {"id": f"c-{order_id}", "email": "jo@example.com", "order_count": 3},
        "lines": [{"sku": sku, "quantity": quantity, "unit_price": price, "weight_g": 250}],
        "currency": "USD", "totals": {"subtotal": total, "total": total},
        "shipping_address": {"line1": "1 Main St", "city": "Austin", "postal_code": "78701",
                             "country": country},
        "payment": {"avs_result": "Y", "cvv_result": "M"},
    }
    order.update(over)
    return order


def put_stock(settings: Any, rows: list[tuple[str, str, str, int]]) -> None:
    """rows: (sku, warehouse, country, on_hand)."""
    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel(sku=s, warehouse=w, country=c, on_hand=n)
                               for s, w, c, n in rows])


@contextmanager
def sandbox_carrier_process(*args: str) -> Iterator[str]:
    """The sandbox carrier as a real process (``python -m sandbox.carrier ARGS``) on a
    free port; yields its URL once healthy, stops it after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.carrier",
                             "--port", str(port), *args])
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the sandbox carrier exited with {proc.returncode}")
        try:
            return httpx.get(f"{url}/healthz", timeout=0.5).is_success
        except httpx.HTTPError:
            return False

    try:
        eventually(healthy, 20, "the sandbox carrier to answer /healthz")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
