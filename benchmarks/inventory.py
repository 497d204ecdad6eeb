"""``orderfleet bench inventory``: reservations/s of the inventory stage, on a real database.

Four runs of the stage's plain function (``reserve_orders``), each on fresh orders placed in
``fraud_checked``:

* single: one order per transaction, one process (the naive design's cost per order);
* bulk: ``batch_size`` orders per transaction, one process (what a stage message carries);
* concurrent: bulk batches from several processes, orders spread over many SKUs;
* hot SKU: bulk batches from several processes, every order wanting the same SKU with stock
  for a fifth of them (the flash-sale case: every batch waits for the same row lock).

Celery is left out on purpose: this measures the database work a reservation costs. The
end-to-end proof (tests/e2e/test_inventory_concurrency.py) runs the same stage on 8 workers.
Also runnable as ``python -m benchmarks.inventory``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from rich.console import Console
from sqlalchemy import func, insert, select

from config.settings import Settings
from domain.clock import utcnow
from domain.db import UnitOfWork, dispose_engines, unit_of_work
from domain.lifecycle import State
from domain.models import OrderLine, OrderRow, Reservation
from domain.stock import StockLevel, set_stock_levels
from workers.fleet import reset_run_database

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/orderfleet_bench_inventory"
WAREHOUSES = (("US-EAST", "US"), ("EU-DE", "DE"))
SPREAD_SKUS = 200


def place_orders(uow: UnitOfWork, orders: Sequence[Sequence[tuple[str, int]]], *,
                 tag: str, country: str | Sequence[str] = "US",
                 state: State = State.FRAUD_CHECKED) -> list[int]:
    """Insert orders (each a list of (sku, quantity) lines) straight into ``state``; return
    their ids in the same order. ``country``: one for all, or one per order.

    For benchmarks and the concurrency proof: it skips intake and fraud so that only the
    reservation stage is measured. The orders carry no personal data.
    """
    session = uow.session
    now = utcnow()
    countries = [country] * len(orders) if isinstance(country, str) else list(country)
    rows = [{"source": "native", "store": "bench", "source_order_id": f"{tag}-{i}",
             "state": state.value, "paid_at": now, "received_at": now, "updated_at": now,
             "currency": "USD", "total": Decimal("10.00") * sum(q for _, q in lines),
             "total_usd": Decimal("10.00") * sum(q for _, q in lines), "customer_id": "bench",
             "ship_country": countries[i], "weight_g": 250 * sum(q for _, q in lines),
             "payload": {"lines": [{"sku": s, "quantity": q} for s, q in lines]}}
            for i, lines in enumerate(orders)]
    ids: list[int] = []
    for i in range(0, len(rows), 1000):
        ids.extend(session.execute(
            insert(OrderRow).returning(OrderRow.id, sort_by_parameter_order=True),
            rows[i : i + 1000]).scalars())
    line_rows = [{"order_id": oid, "line_no": n, "sku": sku, "quantity": qty,
                  "unit_price": Decimal("10.00"), "weight_g": 250}
                 for oid, lines in zip(ids, orders, strict=True)
                 for n, (sku, qty) in enumerate(lines, start=1)]
    for i in range(0, len(line_rows), 2000):
        session.execute(insert(OrderLine), line_rows[i : i + 2000])
    return ids


def _random_orders(n: int, rng: random.Random, skus: Sequence[str]) -> list[list[tuple[str, int]]]:
    """1-3 lines of distinct SKUs, 1-2 units each."""
    return [[(s, rng.randint(1, 2)) for s in rng.sample(list(skus), rng.randint(1, 3))]
            for _ in range(n)]


def _reserve_part(args: tuple[Settings, list[int]]) -> tuple[int, int]:
    from tasks.inventory import reserve_orders

    settings, ids = args
    with unit_of_work(settings) as uow:
        out = reserve_orders(uow, ids, settings)
    return len(out.reserved), len(out.backordered)


def _reservation_rows(settings: Settings, ids: list[int]) -> int:
    with unit_of_work(settings) as uow:
        return int(uow.session.execute(
            select(func.count()).select_from(Reservation)
            .where(Reservation.order_id.in_(ids), Reservation.status == "active")).scalar_one())


def _figures(name: str, settings: Settings, ids: list[int], seconds: float,
             reserved: int, backordered: int, console: Console, **extra: Any) -> dict[str, Any]:
    rows = _reservation_rows(settings, ids)
    out = {"orders": len(ids), "reserved": reserved, "backordered": backordered,
           "reservation_rows": rows, "seconds": round(seconds, 3),
           "orders_per_s": round(len(ids) / seconds, 1),
           "reservations_per_s": round(rows / seconds, 1), **extra}
    console.print(f"{name:<10} {len(ids):>5} orders {seconds:6.2f}s {out['orders_per_s']:>7.0f} "
                  f"orders/s {out['reservations_per_s']:>7.0f} reservation rows/s "
                  f"({reserved} reserved, {backordered} backordered)", soft_wrap=True)
    return out


def run_inventory_bench(*, n_orders: int = 5000, n_single: int = 1000, processes: int = 4,
                        database_url: str | None = None, quiet: bool = False,
                        seed: int = 5) -> dict[str, Any]:
    """Run the four measurements on a wiped benchmark database; return the figures."""
    from domain.db import chunks
    from tasks.inventory import reserve_orders

    url = database_url or DEFAULT_DATABASE_URL
    # The hot-SKU run sells out on purpose: auto-freeze would hold the rest (a different path).
    settings = Settings(database_url=url, sku_auto_freeze=False)
    console = Console(stderr=True, quiet=quiet)
    reset_run_database(settings, "bench")
    rng = random.Random(seed)
    skus = [f"SKU-{i:04d}" for i in range(SPREAD_SKUS)]
    total = n_single + 3 * n_orders
    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel(sku=s, warehouse=w, country=c, on_hand=total * 2)
                               for s in skus for w, c in WAREHOUSES])
        set_stock_levels(uow, [StockLevel(sku="HOT", warehouse="US-EAST", country="US",
                                          on_hand=n_orders // 5)])
        single_ids = place_orders(uow, _random_orders(n_single, rng, skus), tag="single")
        bulk_ids = place_orders(uow, _random_orders(n_orders, rng, skus), tag="bulk")
        conc_ids = place_orders(uow, _random_orders(n_orders, rng, skus), tag="conc")
        hot_ids = place_orders(uow, [[("HOT", 1)] for _ in range(n_orders)], tag="hot")
        warm_ids = place_orders(uow, _random_orders(processes, rng, skus), tag="warm")
    results: dict[str, Any] = {
        "database": settings.database_url.split("@")[-1], "batch_size": settings.batch_size,
        "processes": processes,
    }

    t0 = time.perf_counter()
    reserved = backordered = 0
    for oid in single_ids:
        with unit_of_work(settings) as uow:
            out = reserve_orders(uow, [oid], settings)
        reserved += len(out.reserved)
        backordered += len(out.backordered)
    results["single"] = _figures("single", settings, single_ids, time.perf_counter() - t0,
                                 reserved, backordered, console)

    t0 = time.perf_counter()
    reserved = backordered = 0
    for part in chunks(bulk_ids, settings.batch_size):
        r, b = _reserve_part((settings, part))
        reserved += r
        backordered += b
    results["bulk"] = _figures("bulk", settings, bulk_ids, time.perf_counter() - t0, reserved,
                               backordered, console)

    dispose_engines()  # the children open their own connections
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        # Each child connects and compiles its statements once before the clock starts.
        pool.map(_reserve_part, [(settings, [i]) for i in warm_ids], chunksize=1)
        for name, ids in (("concurrent", conc_ids), ("hot_sku", hot_ids)):
            t0 = time.perf_counter()
            parts = pool.map(_reserve_part,
                             [(settings, p) for p in chunks(ids, settings.batch_size)],
                             chunksize=1)
            seconds = time.perf_counter() - t0
            results[name] = _figures(name, settings, ids, seconds, sum(r for r, _ in parts),
                                     sum(b for _, b in parts), console)
    results["hot_sku"]["units"] = n_orders // 5
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--single", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_inventory_bench(n_orders=args.orders, n_single=args.single,
                                 processes=args.processes, database_url=args.database_url,
                                 quiet=args.json)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
