"""``orderfleet bench carrier``: labels through a faulty carrier, and recovery from an outage.

One fleet (real workers, beat, Redis, PostgreSQL, the sandbox carrier over HTTP) runs three
phases:

1. a clean carrier: ``--orders`` orders, the baseline labels/s;
2. the same carrier failing ``--fault-rate`` of all calls (mixed 5xx, 429 with Retry-After,
   timeouts, and labels charged whose answer was lost): labels/s, faults, retries;
3. an outage of sbx-air for ``--outage-s``: when the breaker opened, when it closed, and how
   long after the outage every waiting order had its label (time to recover).

Every phase ends with the carrier's own count of charged labels compared with ours.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from config.settings import Settings
from domain.breaker import CircuitBreaker
from domain.carriers import SandboxCarrier
from domain.lifecycle import LABELLED_OR_LATER, State, values
from workers.demo import wait_until
from workers.fleet import (
    BENCH_REDIS_DB,
    Fleet,
    free_port,
    reset_run_database,
    run_settings,
    use_settings,
)

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/orderfleet_bench_carrier"
LABELLED = tuple(values(LABELLED_OR_LATER))
# Where an order rests when it will not get a label on its own (the fraud desk holds a few
# synthetic orders, e.g. a customer seen in an earlier phase).
RESTING = tuple(values({State.ON_HOLD, State.REJECTED, State.BACKORDERED, State.LABEL_FAILED}))
FLEET_SETTINGS: dict[str, Any] = {
    "carrier_timeout_s": 1.0,
    "carrier_retry_max_s": 5.0,
    "label_retry_max_countdown_s": 4.0,
    "wave_max_age_s": 1.0,
    "tracking_sweep_interval_s": 2.0,
    "sweep_interval_s": 5.0,
    "stage_deadline_s": 30.0,
    "breaker_window_s": 10.0,
    "breaker_min_calls": 12,
    "breaker_failure_rate": 0.75,
    "breaker_open_s": 2.0,
    "breaker_max_open_s": 8.0,
    "breaker_probe_lease_s": 5.0,
}


def mixed_faults(rate: float) -> dict[str, Any]:
    """``rate`` of calls fail: 40% of them 5xx, 20% 429, 20% timeouts, 20% lost answers."""
    return {"error_rate": 0.4 * rate, "rate_limit_rate": 0.2 * rate, "retry_after_s": 0.5,
            "timeout_rate": 0.2 * rate, "lost_rate": 0.2 * rate, "hang_s": 1.5}


def _settled(settings: Settings, ids: list[int], states: tuple[str, ...]) -> int:
    from domain.db import unit_of_work
    from domain.models import OrderRow

    with unit_of_work(settings) as uow:
        return int(uow.session.execute(
            select(func.count()).select_from(OrderRow)
            .where(OrderRow.id.in_(ids), OrderRow.state.in_(states))).scalar_one())


def _books(settings: Settings) -> dict[str, int]:
    from domain.db import unit_of_work
    from domain.models import Shipment, Wave

    with unit_of_work(settings) as uow:
        s = uow.session
        return {
            "labels": int(s.execute(
                select(func.count(Shipment.label_id.distinct()))).scalar_one()),
            "shipments": int(s.execute(select(func.count()).select_from(Shipment)).scalar_one()),
            "orders_with_two_shipments": len(s.execute(
                select(Shipment.order_id).group_by(Shipment.order_id)
                .having(func.count() > 1)).all()),
            "wave_deferrals": int(s.execute(select(func.coalesce(
                func.sum(Wave.label_attempts), 0))).scalar_one()),
        }


def _phase(settings: Settings, carrier: SandboxCarrier, n: int, seed: int, start_id: int,
           label: str, quiet: bool) -> tuple[list[int], dict[str, Any]]:
    from sandbox.synthetic import generate_orders
    from tasks.intake import submit_orders

    payloads = generate_orders(n, seed=seed, invalid_rate=0.0, high_value_rate=0.0,
                               risky_rate=0.0, start_id=start_id)
    before = carrier.stats()
    t0 = time.perf_counter()
    ids = submit_orders(payloads, settings=settings).accepted
    wait_until(settings, lambda _c: _settled(settings, ids, LABELLED + RESTING),
               len(ids), label=label, quiet=quiet, timeout=max(300.0, n * 1.0))
    elapsed = time.perf_counter() - t0
    labelled = _settled(settings, ids, LABELLED)
    after = carrier.stats()
    delta = {k: after[k] - before.get(k, 0) for k in after}
    return ids, {"orders": len(ids), "labelled": labelled, "seconds": round(elapsed, 2),
                 "labels_per_s": round(labelled / elapsed, 1), "carrier": delta}


def run_carrier_bench(*, n_orders: int, fault_rate: float, outage_s: float, workers: int,
                      database_url: str | None, quiet: bool) -> dict[str, Any]:
    from domain.carriers.shared import breaker_policy
    from domain.db import dispose_engines, unit_of_work
    from domain.stock import StockLevel, set_stock_levels
    from sandbox.synthetic import generate_stock

    console = Console(stderr=True, quiet=quiet, width=140)
    url = database_url or DEFAULT_DATABASE_URL
    settings = run_settings("bench", BENCH_REDIS_DB, url,
                            carrier_url=f"http://127.0.0.1:{free_port()}", **FLEET_SETTINGS)
    settings = use_settings(settings)
    dispose_engines()
    reset_run_database(settings, "bench")
    # The fleet empties its own Redis db at start: breakers and queues of an earlier run too.
    fleet = Fleet(settings, workers=workers, carrier_time_scale=36_000.0,
                  log_dir=settings.var_dir / "logs" / "bench-carrier", owner="bench")
    breaker = CircuitBreaker(redis.Redis.from_url(settings.shared_redis),
                             breaker_policy(settings))
    result: dict[str, Any] = {"orders_per_phase": n_orders, "fault_rate": fault_rate,
                              "workers": workers}
    with fleet:
        carrier = SandboxCarrier(settings.carrier_url)
        with unit_of_work(settings) as uow:
            set_stock_levels(uow, [StockLevel.model_validate(r) for r in
                                   generate_stock(seed=9, units_per_sku=4 * n_orders)])
        _, result["clean"] = _phase(settings, carrier, n_orders, 9, 1, "clean carrier", quiet)
        carrier.set_faults(**mixed_faults(fault_rate), seed=9)
        _, result["faulty"] = _phase(settings, carrier, n_orders, 10, 100_001,
                                     f"{fault_rate:.0%} faults", quiet)
        result["faulty"]["breaker_opened"] = sum(
            t["to"] == "open" for n in breaker.names() for t in breaker.transitions(n))

        carrier.set_faults(error_rate=1.0, carriers=["sbx-air"], duration_s=outage_s)
        outage_start = time.time()
        ids, phase = _phase(settings, carrier, n_orders, 11, 200_001,
                            f"sbx-air down {outage_s:.0f}s", quiet)
        recovered_at = time.time()
        history = breaker.transitions("sbx-air")
        opened = [t["at"] for t in history if t["to"] == "open" and t["at"] >= outage_start]
        closed = [t["at"] for t in history if t["to"] == "closed" and t["at"] >= outage_start]
        outage_end = outage_start + outage_s
        phase.update({
            "outage_s": outage_s,
            "breaker_opened_after_s": round(opened[0] - outage_start, 2) if opened else None,
            "breaker_closed_after_outage_s": round(closed[-1] - outage_end, 2) if closed
            else None,
            "all_labelled_after_outage_s": round(recovered_at - outage_end, 2),
            "transitions": [f"{t['from']}->{t['to']}" for t in history
                            if t["at"] >= outage_start],
        })
        result["outage"] = phase
        books = _books(settings)
        books["carrier_labels_charged"] = carrier.stats()["labels_purchased"]
        result["books"] = books
        labelled = sum(result[p]["labelled"] for p in ("clean", "faulty", "outage"))
        books["orders_labelled"] = labelled
        result["exactly_once"] = (books["labels"] == books["shipments"]
                                  == books["carrier_labels_charged"] == labelled
                                  and books["orders_with_two_shipments"] == 0)
    _print(console, result)
    return result


def _print(console: Console, r: dict[str, Any]) -> None:
    table = Table("phase", "labelled", "seconds", "labels/s", "API calls", "5xx", "429",
                  "timeouts", "lost (labels)", "replays", "look-ups")
    for name in ("clean", "faulty", "outage"):
        p, c = r[name], r[name]["carrier"]
        table.add_row(name, f"{p['labelled']}/{p['orders']}", f"{p['seconds']:.1f}",
                      f"{p['labels_per_s']:.1f}",
                      str(c["api_requests"]), str(c["faults_error"]), str(c["faults_rate_limit"]),
                      str(c["faults_timeout"]), f"{c['faults_lost']} ({c['lost_labels']})",
                      str(c["replays"]), str(c["lookups"]))
    console.print(table)
    o = r["outage"]
    console.print(f"outage of sbx-air for {o['outage_s']:.0f}s: breaker opened after "
                  f"{o['breaker_opened_after_s']}s, closed {o['breaker_closed_after_outage_s']}s "
                  f"after the outage ended; every order labelled "
                  f"{o['all_labelled_after_outage_s']}s after it ended ({o['transitions']})")
    console.print(f"books: {r['books']}; breaker opened during the faulty phase: "
                  f"{r['faulty']['breaker_opened']} times; exactly once: {r['exactly_once']}")
