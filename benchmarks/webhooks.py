"""``orderfleet bench webhooks``: signed Shopify webhooks/s accepted by ``orderfleet serve``,
with the fleet draining the orders behind it.

A real fleet (API process, Celery workers, beat, sandbox carrier) runs on a database named
*bench* (wiped). The load generator signs every ``orders/paid`` body first (so signing is not
timed), then fires them over keep-alive connections with ``--concurrency`` requests in
flight. Figures: webhooks/s accepted (all answered 200), answer latency percentiles, and the
orders/s at which the workers took those orders from paid to labelled meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from rich.console import Console
from sqlalchemy import func, select

from config.settings import Settings
from domain.lifecycle import LABELLED_OR_SETTLED, State
from sandbox.storefront import shopify_headers
from workers.demo import wait_until
from workers.fleet import (
    BENCH_REDIS_DB,
    Fleet,
    free_port,
    reset_run_database,
    run_settings,
    use_settings,
)

SHOP = "bench-shop"
SECRET = "shpss_bench_webhook_secret"


def http_request(host: str, port: int, path: str, body: bytes,
                 headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 keep-alive POST as bytes, built before the clock starts."""
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def fire(host: str, port: int, requests: list[bytes],
               concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    """Send the pre-built requests over ``concurrency`` keep-alive connections; return
    (seconds, latencies, status counts).

    A bare asyncio client on purpose: a full HTTP client costs the generator about as much
    CPU per request as the server spends, which on a small machine would measure the client.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    pending = list(reversed(requests))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while pending:
                raw = pending.pop()
                t = time.perf_counter()
                writer.write(raw)
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies, statuses


def _pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(q) - 1] * 1000, 1) if len(values) > 1 \
        else round(values[0] * 1000, 1)


def run_webhook_bench(*, n_orders: int, concurrency: int, workers: int, quiet: bool,
                      database_url: str | None = None, seed: int = 11) -> dict[str, Any]:
    from domain.db import unit_of_work
    from domain.models import OrderEvent
    from domain.stock import StockLevel, set_stock_levels
    from sandbox.synthetic import generate_orders, generate_stock

    console = Console(stderr=True, quiet=quiet)
    url = database_url or f"sqlite:///{Settings().var_dir / 'bench-webhooks.db'}"
    settings = run_settings("bench", BENCH_REDIS_DB, url, shopify_secrets={SHOP: SECRET},
                            api_port=free_port(), carrier_url=f"http://127.0.0.1:{free_port()}",
                            wave_max_age_s=1.0, sweep_interval_s=30.0, stage_deadline_s=300.0,
                            tracking_sweep_interval_s=3600.0)
    settings = use_settings(settings)
    reset_run_database(settings, "bench")
    payloads = generate_orders(n_orders, seed=seed, store=SHOP, shopify_rate=1.0,
                               invalid_rate=0.0, high_value_rate=0.0, risky_rate=0.0)
    path = f"/webhooks/shopify/{SHOP}"
    requests = []
    for p in payloads:
        body = json.dumps(p).encode()
        requests.append(http_request("127.0.0.1", settings.api_port, path, body,
                                     shopify_headers(SECRET, body, "orders/paid", SHOP)))
    fleet = Fleet(settings, workers=workers, beat=True, api=True, carrier_time_scale=1.0,
                  owner="bench")
    with fleet:
        with unit_of_work(settings) as uow:
            set_stock_levels(uow, [StockLevel.model_validate(r)
                                   for r in generate_stock(seed=seed, units_per_sku=n_orders)])
        t0 = time.time()
        seconds, latencies, statuses = asyncio.run(
            fire("127.0.0.1", settings.api_port, requests, concurrency))
        accepted = statuses.get(200, 0)
        console.print(f"accepted {accepted}/{n_orders} webhooks in {seconds:.2f}s: "
                      f"{accepted / seconds:.0f} webhooks/s (statuses {statuses})")
        # Settled: labelled (or further), or parked for a person (fraud review, no stock).
        counts = wait_until(settings, lambda c: sum(c.get(s.value, 0) for s in LABELLED_OR_SETTLED),
                            accepted, label="fleet: orders settled", quiet=quiet,
                            timeout=max(300.0, n_orders * 0.3))
        with unit_of_work(settings) as uow:
            labelled, last = uow.session.execute(
                select(func.count(), func.max(OrderEvent.at))
                .where(OrderEvent.to_state == State.LABELLED.value)).one()
    drained_s = last.timestamp() - t0
    latency_ms = {"p50": _pct(latencies, 50), "p95": _pct(latencies, 95),
                  "p99": _pct(latencies, 99), "max": round(max(latencies) * 1000, 1)}
    result = {
        "webhooks": n_orders,
        "concurrency": concurrency,
        "workers": workers,
        "database": settings.database_url.split("@")[-1],
        "accept_seconds": round(seconds, 2),
        "webhooks_per_s": round(accepted / seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "latency_ms": latency_ms,
        "by_state": counts,
        "labelled": labelled,
        "labelled_seconds": round(drained_s, 2),
        "labelled_orders_per_s": round(labelled / drained_s, 1),
    }
    console.print(f"[bold]{result['webhooks_per_s']} webhooks/s accepted (p50 "
                  f"{latency_ms['p50']} ms, p99 {latency_ms['p99']} ms); "
                  f"fleet labelled them at {result['labelled_orders_per_s']} orders/s[/bold]")
    return result
