"""``orderfleet bench``: the pipeline's orders/s against a naive no-op chain, on one fleet.

Both runs use the same Redis, the same worker processes and the same Celery settings. The
baseline is the naive design: one message per order per stage (a chain of five no-op tasks).
The pipeline carries up to ``batch_size`` order ids per message and writes with bulk SQL.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rich.console import Console
from sqlalchemy import func, select

from config.settings import Settings
from domain.lifecycle import LABELLED_OR_LATER, LABELLED_OR_SETTLED, State
from workers.demo import wait_until
from workers.fleet import BENCH_REDIS_DB, Fleet, reset_run_database, run_settings, use_settings


def noop_chain_run(n: int, settings: Settings, quiet: bool) -> dict[str, Any]:
    from celery import chain

    from benchmarks.noop import NOOP_DONE_KEY, noop

    r = redis.Redis.from_url(settings.broker_url)
    r.delete(NOOP_DONE_KEY)
    console = Console(stderr=True, quiet=quiet)
    t0 = time.perf_counter()
    for i in range(n):
        chain(noop.si(i, 1), noop.si(i, 2), noop.si(i, 3), noop.si(i, 4),
              noop.si(i, 5, last=True)).apply_async()
    sent = time.perf_counter() - t0
    deadline = time.monotonic() + max(120.0, n * 0.1)
    while (done := int(r.get(NOOP_DONE_KEY) or 0)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no-op chains: {done}/{n} done")
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    console.print(f"no-op chain: {n} orders x 5 tasks in {elapsed:.2f}s "
                  f"(sending took {sent:.2f}s): {n / elapsed:.0f} orders/s")
    return {"orders": n, "seconds": round(elapsed, 3), "orders_per_s": round(n / elapsed, 1)}


def pipeline_run(n: int, settings: Settings, quiet: bool, seed: int = 7) -> dict[str, Any]:
    from domain.db import unit_of_work
    from domain.models import OrderEvent
    from domain.stock import StockLevel, set_stock_levels
    from sandbox.synthetic import generate_orders, generate_stock
    from tasks.intake import submit_orders

    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel.model_validate(r)
                               for r in generate_stock(seed=seed, units_per_sku=n)])
    payloads = generate_orders(n, seed=seed, invalid_rate=0.0, high_value_rate=0.0,
                               risky_rate=0.0)
    t0 = time.time()
    accepted = 0
    for i in range(0, n, 1000):
        accepted += len(submit_orders(payloads[i : i + 1000], settings=settings).accepted)
    submitted = time.time() - t0
    # The fraud check may hold a few synthetic "normal" orders for review: they are done too.
    counts = wait_until(settings, lambda c: sum(c.get(s.value, 0) for s in LABELLED_OR_SETTLED),
                        accepted, label="pipeline: orders done", quiet=quiet,
                        timeout=max(300.0, n * 0.2))
    with unit_of_work(settings) as uow:
        last = uow.session.execute(select(func.max(OrderEvent.at)).where(
            OrderEvent.to_state == State.LABELLED.value)).scalar_one()
    elapsed = last.timestamp() - t0
    labelled = sum(counts.get(s.value, 0) for s in LABELLED_OR_LATER)
    Console(stderr=True, quiet=quiet).print(
        f"pipeline: {labelled} of {accepted} orders paid -> labelled in {elapsed:.2f}s "
        f"(intake took {submitted:.2f}s): {labelled / elapsed:.0f} orders/s")
    return {"orders": labelled, "seconds": round(elapsed, 3),
            "orders_per_s": round(labelled / elapsed, 1), "by_state": counts}


def run_bench(*, n_orders: int, workers: int, concurrency: int, quiet: bool,
              database_url: str | None = None) -> dict[str, Any]:
    url = database_url or f"sqlite:///{Settings().var_dir / 'bench.db'}"
    # The benchmark's own Redis db (emptied at start: queues, velocity counters of an earlier
    # run, which would make the same synthetic customers look like a card-testing burst) and
    # its own database, whatever ORDERFLEET_* points at.
    settings = run_settings("bench", BENCH_REDIS_DB, url, wave_max_age_s=1.0,
                            sweep_interval_s=30.0, stage_deadline_s=300.0,
                            tracking_sweep_interval_s=3600.0)
    settings = use_settings(settings)
    reset_run_database(settings, "bench")
    fleet = Fleet(settings, workers=workers, concurrency=concurrency, beat=True, flower=False,
                  carrier_time_scale=1.0, owner="bench")
    with fleet:
        noop = noop_chain_run(n_orders, settings, quiet)
        pipeline = pipeline_run(n_orders, settings, quiet)
    ratio = round(pipeline["orders_per_s"] / noop["orders_per_s"], 2)
    result = {
        "orders": n_orders,
        "workers": workers,
        "concurrency": concurrency,
        "database": settings.database_url.split("@")[-1],
        "batch_size": settings.batch_size,
        "noop_chain_orders_per_s": noop["orders_per_s"],
        "pipeline_orders_per_s": pipeline["orders_per_s"],
        "ratio": ratio,
    }
    Console(stderr=True, quiet=quiet).print(
        f"[bold]pipeline {result['pipeline_orders_per_s']} orders/s vs no-op chain "
        f"{result['noop_chain_orders_per_s']} orders/s: ratio {ratio}x[/bold]")
    return result
