"""Proof that reservation never oversells on a real fleet (orders split across warehouses
included), and survives a kill -9 mid-task.

Eight Celery worker processes (one pool process each) consume only the inventory queue; the
orders are placed straight in ``fraud_checked`` so the test isolates the reservation stage.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text

from benchmarks.inventory import place_orders
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.models import OrderEvent, OrderLine, OrderRow, Reservation, SkuHealth, Stock, Warehouse
from domain.routing import plan_warehouses
from tasks.inventory import reserve
from tests.e2e.conftest import state_counts
from tests.integration.helpers import put_stock
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

HOT_UNITS = 1000
SINGLE_ORDERS = 5000
MULTI_ORDERS = 1000
# SPL-A only in US-EAST, SPL-B only in EU-DE: an order of both can only ship split.
SPLIT_UNITS = 150
SPLIT_ORDERS = 300
STOCK = [("HOT", "US-EAST", "US", HOT_UNITS),
         ("HOT-B", "US-EAST", "US", 300), ("HOT-B", "EU-DE", "DE", 200),
         ("HOT-C", "US-EAST", "US", 250), ("HOT-C", "EU-DE", "DE", 250),
         ("SPL-A", "US-EAST", "US", SPLIT_UNITS), ("SPL-B", "EU-DE", "DE", SPLIT_UNITS)]

# One statement, so one snapshot: stock levels and the active reservations behind them.
SAMPLE_SQL = text("""
    SELECT s.sku, s.warehouse, s.on_hand, s.reserved, COALESCE(r.units, 0) AS units
    FROM stock s
    LEFT JOIN (SELECT sku, warehouse, SUM(quantity) AS units FROM reservations
               WHERE status = 'active' GROUP BY sku, warehouse) r
      ON r.sku = s.sku AND r.warehouse = s.warehouse
""")


class StockSampler(threading.Thread):
    """Samples stock from its own connection while the fleet works."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = create_engine(url, pool_size=1)
        self.stop = threading.Event()
        self.samples = 0
        self.lowest_free: int | None = None
        self.mismatches: list[Any] = []

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                rows = conn.execute(SAMPLE_SQL).all()
                conn.rollback()
                self.samples += 1
                for r in rows:
                    free = r.on_hand - r.reserved
                    self.lowest_free = free if self.lowest_free is None else min(
                        self.lowest_free, free)
                    if r.reserved != r.units:
                        self.mismatches.append(tuple(r))
                time.sleep(0.01)
        self.engine.dispose()


def assert_reservations_consistent(settings: Any) -> dict[str, Any]:
    """Every invariant of the stage, checked on the final state; returns a few figures."""
    with unit_of_work(settings) as uow:
        s = uow.session
        orders = {o.id: o for o in s.execute(select(OrderRow)).scalars()}
        lines: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
        for ln in s.execute(select(OrderLine)).scalars():
            lines[ln.order_id].append((ln.id, ln.sku, ln.quantity))
        res: dict[int, list[Reservation]] = defaultdict(list)
        for r in s.execute(select(Reservation)).scalars():
            res[r.order_id].append(r)
        stock = {(st.sku, st.warehouse): st for st in s.execute(select(Stock)).scalars()}
        events = dict(s.execute(select(OrderEvent.order_id, func.count())
                                .group_by(OrderEvent.order_id)).all())
        countries = dict(s.execute(select(Warehouse.code, Warehouse.country)).all())
    active: dict[tuple[str, str], int] = defaultdict(int)
    for rs in res.values():
        for r in rs:
            assert r.status == "active"
            active[(r.sku, r.warehouse)] += r.quantity
    # Stock: reserved is exactly the active reservations, and never more than on hand.
    for key, st in stock.items():
        assert st.reserved == active.get(key, 0), key
        assert 0 <= st.reserved <= st.on_hand, key
    available = {k: st.on_hand - st.reserved for k, st in stock.items()}
    parts_of: dict[int, list[int]] = defaultdict(list)
    for o in orders.values():
        if o.parent_id is not None:
            parts_of[o.parent_id].append(o.id)
    for oid, order in orders.items():
        if order.state == "split":
            # No one warehouse had every line: its parts hold its lines, each exactly once,
            # and the reservations; a redelivery created no part twice.
            assert events.get(oid) == 1 and res[oid] == [], oid
            assert len(parts_of[oid]) >= 2, oid
            assert sorted((sku, q) for p in parts_of[oid] for _, sku, q in lines[p]) == sorted(
                (sku, q) for _, sku, q in lines[oid]), oid
            assert len({orders[p].warehouse for p in parts_of[oid]}) == len(parts_of[oid]), oid
            continue
        # One transition per order (a part: its insertion, then its decision): duplicates and
        # redeliveries changed nothing twice.
        expected_events = 1 if order.parent_id is None else 2
        assert events.get(oid) == expected_events, (oid, events.get(oid))
        if order.state == "reserved":
            # All lines, each once, from the order's one warehouse.
            got = sorted((r.order_line_id, r.sku, r.quantity) for r in res[oid])
            assert got == sorted(lines[oid]), oid
            assert {r.warehouse for r in res[oid]} == {order.warehouse}, oid
        else:
            assert order.state == "backordered", (oid, order.state)
            assert res[oid] == [], oid
            # Stock only went down during the run: what cannot ship now could not then.
            wanted = [(sku, qty) for _, sku, qty in lines[oid]]
            plan = plan_warehouses(wanted, available, countries, order.ship_country)
            assert plan.warehouse is None, oid
            # ... nor could a split (a part is never split again).
            assert order.parent_id is not None or not plan.is_split, oid
    return {"active_units": dict(active), "orders": len(orders)}


def store_order_counts(settings: Any) -> dict[str, int]:
    """States of the orders placed (not the parts a split created)."""
    with unit_of_work(settings) as uow:
        return dict(uow.session.execute(
            select(OrderRow.state, func.count()).where(OrderRow.parent_id.is_(None))
            .group_by(OrderRow.state)).all())


def test_5000_orders_compete_for_1000_units_on_8_workers_and_none_is_oversold(
        start_fleet, settings, broker) -> None:
    # Given 8 worker processes on the inventory queue and 1,000 units of HOT
    fleet = start_fleet(workers=8, concurrency=1, queues=("inventory",), beat=False,
                        sku_auto_freeze=False)
    put_stock(settings, STOCK)
    rng = random.Random(5)
    specs: list[tuple[list[tuple[str, int]], str]] = [([("HOT", 1)], "US")] * SINGLE_ORDERS
    for _ in range(MULTI_ORDERS):
        skus = rng.sample(["HOT", "HOT-B", "HOT-C"], rng.randint(2, 3))
        specs.append(([(s, 1 if s == "HOT" else rng.randint(1, 2)) for s in skus],
                      rng.choice(["US", "DE"])))
    specs += [([("SPL-A", 1), ("SPL-B", 1)], "US")] * SPLIT_ORDERS
    rng.shuffle(specs)
    with unit_of_work(settings) as uow:
        ids = place_orders(uow, [lines for lines, _ in specs], tag="proof",
                           country=[c for _, c in specs])
    total = SINGLE_ORDERS + MULTI_ORDERS + SPLIT_ORDERS
    assert len(ids) == total
    sampler = StockSampler(settings.database_url)
    sampler.start()

    # When 60 messages of 100 orders are sent, each twice (duplicates race their originals)
    parts = [ids[i : i + 100] for i in range(0, total, 100)]
    messages = parts + parts
    rng.shuffle(messages)
    t0 = time.perf_counter()
    for part in messages:
        reserve.delay(part)

    def decided() -> bool:
        # Reserved, backordered or split (its parts are decided in the same transaction).
        return state_counts(settings).get("fraud_checked", 0) == 0

    eventually(decided, 120, "every order to be reserved, backordered or split")
    elapsed = time.perf_counter() - t0
    # Retries of contended orders may still be in flight: let the queue drain.
    eventually(lambda: broker.llen("inventory") == 0 and not broker.hlen("unacked"), 60,
               "the inventory queue to drain")
    sampler.stop.set()
    sampler.join(10)

    # Then exactly the available units of HOT are reserved, none oversold
    figures = assert_reservations_consistent(settings)
    assert figures["active_units"][("HOT", "US-EAST")] == HOT_UNITS
    # ... and the split-only orders took every unit of both, each order split once in two
    assert figures["active_units"][("SPL-A", "US-EAST")] == SPLIT_UNITS
    assert figures["active_units"][("SPL-B", "EU-DE")] == SPLIT_UNITS
    counts = store_order_counts(settings)
    assert counts.get("reserved", 0) + counts.get("backordered", 0) + counts.get("split", 0) \
        == total
    assert counts["split"] == SPLIT_UNITS
    assert state_counts(settings)["split"] == SPLIT_UNITS
    # ... and stock on hand minus reserved was never below zero at any sampled moment
    assert sampler.samples >= 20, sampler.samples
    assert sampler.lowest_free is not None and sampler.lowest_free >= 0
    assert sampler.mismatches == []
    # ... and the 8 worker processes all took part
    from workers.app import app

    stats = app.control.inspect(timeout=2).stats() or {}
    busy = [name for name, st in stats.items() if f"-{os.getpid()}@" in name
            and st.get("total", {}).get("orderfleet.inventory.reserve", 0) > 0]
    assert len(busy) == 8, stats.keys()
    print(f"\nproof: {total} orders decided by 8 workers in {elapsed:.2f}s "
          f"({total / elapsed:.0f} orders/s); {counts.get('reserved', 0)} reserved, "
          f"{counts.get('backordered', 0)} backordered, {counts.get('split', 0)} split; "
          f"{sampler.samples} stock samples, lowest "
          f"free {sampler.lowest_free}; units reserved {figures['active_units']}")
    assert all(fleet.alive().values())


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (after the parenthesised name) is the parent pid.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_a_worker_killed_mid_reservation_leaves_no_orphan_and_the_redelivery_finishes(
        start_fleet, settings, broker, tmp_path) -> None:
    # Given one worker and 100 two-line orders competing for 50 units of KILL-A
    fleet = start_fleet(workers=1, concurrency=1, queues=("inventory",), beat=False,
                        sku_auto_freeze=False)
    put_stock(settings, [("KILL-A", "US-EAST", "US", 50), ("KILL-B", "US-EAST", "US", 100)])
    with unit_of_work(settings) as uow:
        ids = place_orders(uow, [[("KILL-A", 1), ("KILL-B", 1)]] * 100, tag="kill")
        uow.session.add_all(SkuHealth(sku=s, updated_at=utcnow()) for s in ("KILL-A", "KILL-B"))
    # ... and a transaction holding the SKUs' health rows, which the stage locks last, after
    # writing its reservations: the task will stop there with its work uncommitted.
    blocker_engine = create_engine(settings.database_url, pool_size=1)
    blocker = blocker_engine.connect()
    blocker.execute(text("SELECT sku FROM sku_health WHERE sku IN ('KILL-A', 'KILL-B') "
                         "FOR UPDATE"))
    watcher = create_engine(settings.database_url, pool_size=1)
    try:
        reserve.delay(ids)

        def stage_waits_on_health_rows() -> bool:
            with watcher.connect() as conn:
                return bool(conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE '%sku_health%'")).scalar())

        eventually(stage_waits_on_health_rows, 60, "the stage to block mid-transaction")
        with watcher.connect() as conn:  # its reservations exist, uncommitted
            assert conn.execute(text("SELECT count(*) FROM reservations")).scalar() == 0
        (child,) = _children(fleet.procs["worker1"].pid)

        # When the pool process running the task is killed with SIGKILL
        os.kill(child, signal.SIGKILL)
        eventually(lambda: child not in _children(fleet.procs["worker1"].pid), 30,
                   "the killed process to be reaped")
    finally:
        blocker.rollback()
        blocker.close()
        blocker_engine.dispose()

    # Then the redelivered message does the work, once
    eventually(lambda: state_counts(settings) == {"reserved": 50, "backordered": 50}, 90,
               "the redelivered task to reserve 50 orders and backorder 50")
    figures = assert_reservations_consistent(settings)
    assert figures["active_units"] == {("KILL-A", "US-EAST"): 50, ("KILL-B", "US-EAST"): 50}
    # ... the killed transaction left nothing behind, and the worker did lose its process
    with watcher.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reservations")).scalar() == 100
    watcher.dispose()
    log = (tmp_path / "logs" / "worker1.log").read_text(errors="replace")
    assert "WorkerLostError" in log and "SIGKILL" in log
    assert all(fleet.alive().values())
