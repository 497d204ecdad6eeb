"""``orderfleet bench``: the pipeline's orders/s against a naive no-op chain, on one fleet, and
the figures a store's peak day depends on.

Both headline runs use the same Redis, the same worker processes and the same Celery settings.
The baseline is the naive design: one message per order per stage (a chain of five no-op tasks).
The pipeline carries up to ``batch_size`` order ids per message and writes with bulk SQL.

Then, on the same fleet:

* ``noop_tasks_per_s``: a plain drain of no-op tasks, the machine's yardstick (machines of one
  kind differ about 2x: compare the other figures with it, or as ratios);
* ``black_friday_12000_drain_s``: the seed's Black Friday, 12,000 orders paid at once, from the
  first intake call to the last label;
* offered load: orders paid at a steady 25/50/75/100% of the measured capacity for a while;
  throughput and paid -> labelled latency (p50/p95) at each, hence
  ``p95_paid_to_label_s_half_load``;
* worker processes 1/2/4 (each a fleet of its own): throughput and latency of a burst;
* ``peak_worker_rss_mb``: the largest resident set of any worker process (main or pool child)
  sampled during the run.

``run_bench`` writes the result as JSON and a PNG plot (``--out-dir``).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from config.settings import Settings
from domain.lifecycle import LABELLED_OR_LATER, LABELLED_OR_SETTLED, PROCESSING, State, values
from workers.fleet import (
    BENCH_REDIS_DB,
    Fleet,
    reset_run_database,
    run_settings,
    stand_in_ports,
    use_settings,
)

BLACK_FRIDAY_ORDERS = 12_000
LOAD_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SWEEP_WORKERS = (1, 2, 4)
INTAKE_CHUNK = 1000


# --------------------------------------------------------------------------------------------
# Worker memory
# --------------------------------------------------------------------------------------------


def fleet_processes(fleet: Fleet) -> list[tuple[str, psutil.Process]]:
    """The fleet's running processes with their role: ``workers`` for every worker process,
    main and pool children alike; the others by the name the fleet gave them (beat, carrier)."""
    out: list[tuple[str, psutil.Process]] = []
    for name, popen in list(fleet.procs.items()):
        if popen.poll() is not None:
            continue
        role = "workers" if name.startswith("worker") else name
        try:
            main = psutil.Process(popen.pid)
            out.extend((role, p) for p in (main, *main.children(recursive=True)))
        except psutil.NoSuchProcess:
            continue
    return out


class RssSampler:
    """Samples the resident set of every worker process (main and pool children) in a thread."""

    def __init__(self, fleet: Fleet, interval_s: float = 0.5) -> None:
        self.fleet = fleet
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []  # t, total_mb, max_mb, processes
        self.peak_process_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._t0 = time.monotonic()

    def worker_processes(self) -> list[psutil.Process]:
        return [p for role, p in fleet_processes(self.fleet) if role == "workers"]

    def sample(self) -> dict[str, float]:
        rss = []
        for p in self.worker_processes():
            try:
                rss.append(p.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                continue
        row = {"t": round(time.monotonic() - self._t0, 2), "total_mb": round(sum(rss), 1),
               "max_mb": round(max(rss, default=0.0), 1), "processes": len(rss)}
        self.samples.append(row)
        self.peak_process_mb = max(self.peak_process_mb, row["max_mb"])
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# The tables every order rewrites: a long run piles dead row versions into them.
HOT_TABLES = ("orders", "order_events", "order_lines", "reservations", "shipments",
              "noncore_jobs", "waves")


class Vacuumer:
    """What autovacuum does for a running store, for a server that has it turned off (CI
    machines often do): ``VACUUM (ANALYZE)`` of the hot tables of the run's own database every
    ``interval_s``, in a thread. Without it every state count and claim walks the dead row
    versions of the whole run, and a soak measures the server's settings, not the fleet."""

    def __init__(self, settings: Settings, interval_s: float = 60.0) -> None:
        from sqlalchemy import create_engine

        self.enabled = settings.database_url.startswith("postgresql")
        self.interval_s = interval_s
        self.runs: list[dict[str, float]] = []  # t, seconds
        self._engine = (create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
                        if self.enabled else None)
        self.autovacuum = self._setting("autovacuum") if self.enabled else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="vacuum")
        self._t0 = time.monotonic()

    def _setting(self, name: str) -> str:
        from sqlalchemy import text

        assert self._engine is not None
        with self._engine.connect() as conn:
            return str(conn.execute(text(f"SHOW {name}")).scalar_one())

    def vacuum(self) -> None:
        from sqlalchemy import text

        assert self._engine is not None
        t = time.monotonic()
        with self._engine.connect() as conn:
            conn.execute(text(f"VACUUM (ANALYZE) {', '.join(HOT_TABLES)}"))
        self.runs.append({"t": round(t - self._t0, 1), "s": round(time.monotonic() - t, 2)})

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.vacuum()

    def __enter__(self) -> Vacuumer:
        if self.enabled and self.autovacuum == "off":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._engine is not None:
            self._engine.dispose()


def cpu_by_process(fleet: Fleet) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process a run spends CPU in, by pid, with
    its group: the fleet's processes by role (worker mains and pool children together),
    this process (the intake caller), PostgreSQL's and Redis's server processes (all of them
    on this machine: a machine shared with other databases counts their work too)."""
    roles = {p.pid: role for role, p in fleet_processes(fleet)}
    me = os.getpid()
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["pid", "name"]):
        pid, name = proc.info["pid"], proc.info["name"] or ""
        group = roles.get(pid) or ("intake (bench process)" if pid == me
                                   else "postgres" if name.startswith("postgres")
                                   else "redis" if name.startswith("redis") else None)
        if group is None:
            continue
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[pid] = (group, t.user + t.system)
    return out


def cpu_ms_per_order(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                     orders: int) -> dict[str, float]:
    """CPU ms per order of each group between two :func:`cpu_by_process` snapshots (a process
    that started in between counts from zero), largest first, and their total."""
    spent: dict[str, float] = {}
    for pid, (group, cpu) in after.items():
        spent[group] = spent.get(group, 0.0) + cpu - before.get(pid, (group, 0.0))[1]
    per = {g: round(1000 * s / max(orders, 1), 3)
           for g, s in sorted(spent.items(), key=lambda kv: -kv[1]) if s > 0}
    return {**per, "total": round(sum(per.values()), 3)}


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------


def noop_tasks_run(n: int, settings: Settings, quiet: bool) -> dict[str, Any]:
    """A plain drain of ``n`` no-op tasks: what this machine's broker and workers can move."""
    from benchmarks.noop import NOOP_DONE_KEY, noop

    r = redis.Redis.from_url(settings.broker_url)
    r.delete(NOOP_DONE_KEY)
    t0 = time.perf_counter()
    for i in range(n):
        noop.apply_async((i, 1), {"last": True})
    _wait_counter(r, NOOP_DONE_KEY, n, "no-op tasks")
    elapsed = time.perf_counter() - t0
    Console(stderr=True, quiet=quiet).print(
        f"no-op tasks: {n} in {elapsed:.2f}s: {n / elapsed:.0f} tasks/s")
    return {"tasks": n, "seconds": round(elapsed, 3), "tasks_per_s": round(n / elapsed, 1)}


def _wait_counter(r: redis.Redis, key: str, n: int, what: str) -> None:
    deadline = time.monotonic() + max(120.0, n * 0.1)
    while (done := int(r.get(key) or 0)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {done}/{n} done")
        time.sleep(0.05)


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
    _wait_counter(r, NOOP_DONE_KEY, n, "no-op chains")
    elapsed = time.perf_counter() - t0
    console.print(f"no-op chain: {n} orders x 5 tasks in {elapsed:.2f}s "
                  f"(sending took {sent:.2f}s): {n / elapsed:.0f} orders/s")
    return {"orders": n, "seconds": round(elapsed, 3), "orders_per_s": round(n / elapsed, 1)}


def _max_order_id(settings: Settings) -> int:
    from domain.db import unit_of_work
    from domain.models import OrderRow

    with unit_of_work(settings) as uow:
        return int(uow.session.execute(select(func.max(OrderRow.id))).scalar_one() or 0)


def _counts_after(settings: Settings, first_id: int) -> dict[str, int]:
    """Orders by state among those with id > ``first_id`` (one run's orders)."""
    from domain.db import unit_of_work
    from domain.models import OrderRow

    with unit_of_work(settings) as uow:
        # The store's orders (parts of a split order are counted through their parent).
        counts = {s: int(c) for s, c in uow.session.execute(
            select(OrderRow.state, func.count())
            .where(OrderRow.id > first_id, OrderRow.parent_id.is_(None))
            .group_by(OrderRow.state)).all()}
        # A split order is settled once its parts are: until then it is on its way.
        on_the_way = 0 if not counts.get(State.SPLIT.value) else int(uow.session.execute(
            select(func.count(func.distinct(OrderRow.parent_id)))
            .where(OrderRow.id > first_id, OrderRow.parent_id.is_not(None),
                   OrderRow.state.not_in(values(LABELLED_OR_SETTLED)))).scalar_one())
    if on_the_way:
        counts[State.SPLIT.value] -= on_the_way
        counts["split_parts_on_the_way"] = on_the_way
    return counts


def _in_flight_after(settings: Settings, first_id: int) -> int:
    """The store's orders among those with id > ``first_id`` still on their way (a split
    order while any of its parts is). Read through the state index, so it costs what is in
    flight, not the whole run: a soak's GROUP BY over every order so far (``_counts_after``)
    had grown to a core of PostgreSQL by 250,000 orders."""
    from domain.db import unit_of_work
    from domain.models import OrderRow

    waiting = values(PROCESSING)
    with unit_of_work(settings) as uow:
        top = uow.session.execute(select(func.count()).where(
            OrderRow.state.in_(waiting), OrderRow.id > first_id,
            OrderRow.parent_id.is_(None))).scalar_one()
        split = uow.session.execute(select(func.count(func.distinct(OrderRow.parent_id))).where(
            OrderRow.state.in_(waiting), OrderRow.id > first_id,
            OrderRow.parent_id.is_not(None))).scalar_one()
    return int(top) + int(split)


def _done(counts: dict[str, int]) -> int:
    return sum(counts.get(s.value, 0) for s in LABELLED_OR_SETTLED)


def _wait_done(settings: Settings, first_id: int, total: int, timeout: float,
               what: str) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = _counts_after(settings, first_id)
        if _done(counts) >= total:
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {_done(counts)}/{total} done after {timeout:.0f}s "
                               f"({counts})")
        # The figures come from the orders' own timestamps, not from when this loop saw them
        # done: polling slower costs no precision, and its GROUP BY over the run's orders,
        # four times a second, was a tenth of PostgreSQL's time during a run.
        time.sleep(1.0)


def latencies_after(settings: Settings, first_id: int) -> list[float]:
    """Paid (received by intake) -> labelled, in seconds, of the labelled orders after
    ``first_id``."""
    from domain.db import unit_of_work
    from domain.models import OrderEvent, OrderRow

    with unit_of_work(settings) as uow:
        rows = uow.session.execute(
            select(OrderRow.received_at, func.min(OrderEvent.at))
            .join(OrderEvent, OrderEvent.order_id == OrderRow.id)
            .where(OrderRow.id > first_id, OrderEvent.to_state == State.LABELLED.value)
            .group_by(OrderRow.id, OrderRow.received_at)).all()
    return sorted((labelled - received).total_seconds() for received, labelled in rows)


def _label_span(settings: Settings, first_id: int) -> tuple[float, float]:
    """Epoch seconds of the first and the last label among the orders after ``first_id``."""
    from domain.db import unit_of_work
    from domain.models import OrderEvent

    with unit_of_work(settings) as uow:
        lo, hi = uow.session.execute(
            select(func.min(OrderEvent.at), func.max(OrderEvent.at))
            .where(OrderEvent.order_id > first_id,
                   OrderEvent.to_state == State.LABELLED.value)).one()
    return (lo.timestamp(), hi.timestamp()) if lo is not None else (0.0, 0.0)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return round(sorted_values[k], 3)


def _payloads(n: int, seed: int) -> list[dict[str, Any]]:
    from sandbox.synthetic import generate_orders, with_own_emails

    # Valid, ordinary orders (no fraud patterns, no $500+ review line): all can be labelled.
    # Order numbers and e-mail addresses of the seed's own: intake would drop another run's
    # orders as duplicates, and fraud velocity would hold an address a run drew many times
    # (40% of a soak's orders by its 400,000th).
    first = seed * 10_000_000 + 1
    return with_own_emails(generate_orders(n, seed=seed, invalid_rate=0.0, high_value_rate=0.0,
                                           risky_rate=0.0, start_id=first), first)


def _submit(payloads: list[dict[str, Any]], settings: Settings) -> int:
    from tasks.intake import submit_orders

    accepted = 0
    for i in range(0, len(payloads), INTAKE_CHUNK):
        accepted += len(submit_orders(payloads[i : i + INTAKE_CHUNK], settings=settings).accepted)
    return accepted


def _redriven(settings: Settings) -> dict[str, int]:
    from domain.pipeline import redriven
    from domain.surge import client

    return redriven(client(settings))


def _redriven_since(settings: Settings, before: dict[str, int]) -> dict[str, int]:
    """What the re-drive sweep sent again during a run: a lost message shows here, and a run
    with a long tail says why."""
    after = _redriven(settings)
    return {k: n - before.get(k, 0) for k, n in sorted(after.items()) if n > before.get(k, 0)}


def pipeline_run(n: int, settings: Settings, quiet: bool, seed: int = 7,
                 label: str = "pipeline", fleet: Fleet | None = None) -> dict[str, Any]:
    """``n`` orders paid at once: intake to the last label; throughput and latency (and, given
    the ``fleet``, the CPU each group of processes spent per order)."""
    from domain.db import unit_of_work
    from domain.models import OrderEvent, OrderRow

    first_id = _max_order_id(settings)
    payloads = _payloads(n, seed)
    cpu_before = cpu_by_process(fleet) if fleet is not None else {}
    redriven_before = _redriven(settings)
    t0 = time.time()
    accepted = _submit(payloads, settings)
    submitted = time.time() - t0
    # The fraud check may hold a few synthetic "normal" orders for review: they are done too.
    counts = _wait_done(settings, first_id, accepted, max(300.0, n * 0.2), label)
    cpu = (cpu_ms_per_order(cpu_before, cpu_by_process(fleet), accepted)
           if fleet is not None else None)
    with unit_of_work(settings) as uow:
        last = uow.session.execute(
            select(func.max(OrderEvent.at))
            .join(OrderRow, OrderRow.id == OrderEvent.order_id)
            .where(OrderRow.id > first_id, OrderEvent.to_state == State.LABELLED.value)
        ).scalar_one()
    elapsed = last.timestamp() - t0
    labelled = sum(counts.get(s.value, 0) for s in LABELLED_OR_LATER)
    lat = latencies_after(settings, first_id)
    redrove = _redriven_since(settings, redriven_before)
    Console(stderr=True, quiet=quiet).print(
        f"{label}: {labelled} of {accepted} orders paid -> labelled in {elapsed:.2f}s "
        f"(intake took {submitted:.2f}s): {labelled / elapsed:.0f} orders/s, "
        f"p95 latency {percentile(lat, 0.95)}s"
        + (f"; re-driven by the sweep: {redrove}" if redrove else ""))
    return {"orders": labelled, "accepted": accepted, "seconds": round(elapsed, 3),
            "intake_s": round(submitted, 3), "orders_per_s": round(labelled / elapsed, 1),
            "p50_latency_s": percentile(lat, 0.5), "p95_latency_s": percentile(lat, 0.95),
            "by_state": counts, "redriven": redrove,
            **({"cpu_ms_per_order": cpu} if cpu is not None else {})}


def offered_load_run(rate: float, duration_s: float, settings: Settings, quiet: bool,
                     seed: int) -> dict[str, Any]:
    """Orders paid at a steady ``rate`` per second for ``duration_s``: the latency each gets.

    Payments arrive in ticks of 0.1 s (a store's webhooks one after another are no smoother
    than that at these rates); every order's paid -> labelled time is measured.
    """
    first_id = _max_order_id(settings)
    redriven_before = _redriven(settings)
    tick = 0.1
    n = max(1, int(rate * duration_s))
    payloads = _payloads(n, seed)
    t0 = time.monotonic()
    sent = 0
    while sent < n:
        due = min(n, int((time.monotonic() - t0) * rate) + 1)
        if due > sent:
            _submit(payloads[sent:due], settings)
            sent = due
        time.sleep(max(0.0, tick - ((time.monotonic() - t0) % tick)))
    offered_s = time.monotonic() - t0
    counts = _wait_done(settings, first_id, n, max(120.0, n * 0.2), f"load {rate:.0f}/s")
    lat = latencies_after(settings, first_id)
    labelled = sum(counts.get(s.value, 0) for s in LABELLED_OR_LATER)
    # The rate labels came out (first to last label): a fleet that keeps up matches the
    # offered rate; the paid -> labelled delay is in the latency columns, not here.
    first, last = _label_span(settings, first_id)
    achieved = (labelled - 1) / (last - first) if labelled > 1 and last > first else 0.0
    row = {"offered_per_s": round(rate, 1), "orders": n, "labelled": labelled,
           "achieved_per_s": round(achieved, 1), "offered_s": round(offered_s, 2),
           "p50_latency_s": percentile(lat, 0.5), "p95_latency_s": percentile(lat, 0.95),
           "max_latency_s": round(lat[-1], 3) if lat else None,
           "redriven": _redriven_since(settings, redriven_before)}
    Console(stderr=True, quiet=quiet).print(
        f"offered {rate:.0f} orders/s for {duration_s:.0f}s: {row['achieved_per_s']} orders/s, "
        f"p50 {row['p50_latency_s']}s, p95 {row['p95_latency_s']}s")
    return row


# --------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------


def bench_settings(database_url: str | None, carrier_port: int | None) -> Settings:
    url = database_url or f"sqlite:///{Settings().var_dir / 'bench.db'}"
    overrides = stand_in_ports(carrier_port)
    # The benchmark's own Redis db (emptied at start: queues, velocity counters of an earlier
    # run, which would make the same synthetic customers look like a card-testing burst) and
    # its own database, whatever ORDERFLEET_* points at.
    return run_settings("bench", BENCH_REDIS_DB, url, wave_max_age_s=1.0,
                        sweep_interval_s=30.0, stage_deadline_s=300.0,
                        tracking_sweep_interval_s=3600.0, **overrides)


def _stock(settings: Settings, units: int) -> None:
    from domain.db import unit_of_work
    from domain.stock import StockLevel, set_stock_levels
    from sandbox.synthetic import generate_stock

    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel.model_validate(r)
                               for r in generate_stock(seed=7, units_per_sku=units)])


@contextmanager
def bench_fleet(settings: Settings, workers: int, concurrency: int) -> Iterator[Fleet]:
    """A fresh database and Redis db, stock for every run, and a fleet of ``workers``."""
    reset_run_database(settings, "bench")
    _stock(settings, 1_000_000)
    fleet = Fleet(settings, workers=workers, concurrency=concurrency, beat=True, flower=False,
                  carrier_time_scale=1.0, owner="bench")
    with fleet:
        yield fleet


def run_bench(*, n_orders: int, workers: int, concurrency: int, quiet: bool,
              database_url: str | None = None, carrier_port: int | None = None,
              black_friday_orders: int = BLACK_FRIDAY_ORDERS, load_seconds: float = 10.0,
              sweep_orders: int = 2000, out_dir: Path | None = None) -> dict[str, Any]:
    """Every run of ``orderfleet bench`` (``load_seconds=0`` / ``sweep_orders=0`` /
    ``black_friday_orders=0`` leave that part out); writes JSON and PNG to ``out_dir``."""
    settings = use_settings(bench_settings(database_url, carrier_port))
    console = Console(stderr=True, quiet=quiet)
    load: list[dict[str, Any]] = []
    black_friday: dict[str, Any] | None = None
    with bench_fleet(settings, workers, concurrency) as fleet, RssSampler(fleet) as rss:
        noop_tasks = noop_tasks_run(max(2 * n_orders, 2000), settings, quiet)
        noop = noop_chain_run(n_orders, settings, quiet)
        pipeline = pipeline_run(n_orders, settings, quiet, fleet=fleet)
        if black_friday_orders:
            black_friday = pipeline_run(black_friday_orders, settings, quiet, seed=11, fleet=fleet,
                                        label=f"black friday ({black_friday_orders})")
        capacity = max(pipeline["orders_per_s"],
                       black_friday["orders_per_s"] if black_friday else 0.0)
        for i, fraction in enumerate(LOAD_FRACTIONS if load_seconds > 0 else ()):
            row = offered_load_run(capacity * fraction, load_seconds, settings, quiet,
                                   seed=100 + i)
            load.append({"fraction": fraction, **row})
    sweep: list[dict[str, Any]] = []
    for w in (SWEEP_WORKERS if sweep_orders else ()):
        with bench_fleet(settings, w, concurrency) as fleet, RssSampler(fleet) as sweep_rss:
            run = pipeline_run(sweep_orders, settings, quiet, seed=200 + w,
                               label=f"{w} worker process(es)")
        sweep.append({"workers": w, "orders_per_s": run["orders_per_s"],
                      "p50_latency_s": run["p50_latency_s"],
                      "p95_latency_s": run["p95_latency_s"],
                      "peak_worker_rss_mb": sweep_rss.peak_process_mb})
    ratio = round(pipeline["orders_per_s"] / noop["orders_per_s"], 2)
    half = next((r for r in load if r["fraction"] == 0.5), None)
    result: dict[str, Any] = {
        "orders": n_orders,
        "workers": workers,
        "concurrency": concurrency,
        "database": settings.database_url.split("@")[-1],
        "batch_size": settings.batch_size,
        "noop_chain_orders_per_s": noop["orders_per_s"],
        "pipeline_orders_per_s": pipeline["orders_per_s"],
        "ratio": ratio,
        "noop_tasks_per_s": noop_tasks["tasks_per_s"],
        "black_friday_12000_drain_s": black_friday["seconds"] if black_friday else None,
        "black_friday_orders": black_friday_orders or None,
        "p95_paid_to_label_s_half_load": half["p95_latency_s"] if half else None,
        "peak_worker_rss_mb": rss.peak_process_mb,
        "pipeline": pipeline,
        "black_friday": black_friday,
        "offered_load": load,
        "worker_processes": sweep,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out_dir = out_dir or settings.var_dir / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = out_dir / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    result["json_file"] = str(json_path)
    if load or sweep:
        result["plot_file"] = str(plot_bench(result, out_dir / f"bench-{stamp}.png"))
    console.print(summary_table(result))
    return result


def summary_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"orderfleet bench ({result['workers']} worker processes, "
                        f"{result['database']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("no-op tasks/s (the machine's yardstick)", result["noop_tasks_per_s"]),
        ("no-op chain of five, orders/s", result["noop_chain_orders_per_s"]),
        ("pipeline, orders/s", result["pipeline_orders_per_s"]),
        ("ratio", f"{result['ratio']}x"),
        (f"Black Friday ({result['black_friday_orders']}) drain, s",
         result["black_friday_12000_drain_s"]),
        ("p95 paid -> labelled at half load, s", result["p95_paid_to_label_s_half_load"]),
        ("peak worker RSS, MB", result["peak_worker_rss_mb"]),
    ]
    cpu = result["pipeline"].get("cpu_ms_per_order") or {}
    rows.extend((f"pipeline CPU ms/order: {group}", ms) for group, ms in cpu.items())
    for r in result["offered_load"]:
        rows.append((f"offered {r['offered_per_s']}/s: achieved /s, p50 s, p95 s",
                     f"{r['achieved_per_s']}, {r['p50_latency_s']}, {r['p95_latency_s']}"))
    for r in result["worker_processes"]:
        rows.append((f"{r['workers']} worker process(es): orders/s, p95 s",
                     f"{r['orders_per_s']}, {r['p95_latency_s']}"))
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    return table


def plot_bench(result: dict[str, Any], path: Path) -> Path:
    """Throughput and latency against offered load, and against worker processes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    load = result["offered_load"]
    ax = axes[0]
    if load:
        offered = [r["offered_per_s"] for r in load]
        ax.plot(offered, [r["achieved_per_s"] for r in load], "o-", label="achieved orders/s")
        ax.plot(offered, offered, ":", color="grey", label="offered = achieved")
        ax.set_xlabel("offered load, orders/s")
        ax.set_ylabel("orders/s")
        lat_ax = ax.twinx()
        lat_ax.plot(offered, [r["p95_latency_s"] for r in load], "s--", color="tab:red",
                    label="p95 paid -> labelled, s")
        lat_ax.plot(offered, [r["p50_latency_s"] for r in load], "^--", color="tab:orange",
                    label="p50 paid -> labelled, s")
        lat_ax.set_ylabel("latency, s")
        lines = ax.get_legend_handles_labels()
        more = lat_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    ax.set_title("against offered load")
    ax = axes[1]
    sweep = result["worker_processes"]
    if sweep:
        w = [r["workers"] for r in sweep]
        ax.plot(w, [r["orders_per_s"] for r in sweep], "o-", label="orders/s (burst)")
        ax.set_xticks(w)
        ax.set_xlabel("worker processes")
        ax.set_ylabel("orders/s")
        lat_ax = ax.twinx()
        lat_ax.plot(w, [r["p95_latency_s"] for r in sweep], "s--", color="tab:red",
                    label="p95 paid -> labelled, s")
        lat_ax.set_ylabel("latency, s")
        lines = ax.get_legend_handles_labels()
        more = lat_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    ax.set_title("against worker processes")
    fig.suptitle(f"orderfleet bench: {result['database']}, no-op drain "
                 f"{result['noop_tasks_per_s']} tasks/s, {result['at']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Soak: worker memory over a long run
# --------------------------------------------------------------------------------------------


def run_soak(*, n_orders: int, workers: int, concurrency: int, quiet: bool,
             database_url: str | None = None, carrier_port: int | None = None,
             backlog: int = 5000, sample_s: float = 5.0,
             out_dir: Path | None = None) -> dict[str, Any]:
    """``n_orders`` through one fleet, never more than ``backlog`` in flight; the workers'
    RSS sampled every ``sample_s``. Flat memory: the last tenth's mean RSS close to the
    first tenth's (after warm-up)."""
    settings = use_settings(bench_settings(database_url, carrier_port))
    console = Console(stderr=True, quiet=quiet)
    seed = 1000
    submitted = 0
    with bench_fleet(settings, workers, concurrency) as fleet, \
            RssSampler(fleet, interval_s=sample_s) as rss, Vacuumer(settings) as vacuum:
        first_id = _max_order_id(settings)
        t0 = time.monotonic()
        last_report = t0
        while True:
            done = submitted - _in_flight_after(settings, first_id)
            if done >= n_orders:
                break
            # Top the backlog up in one go: one in-flight count per top-up, not per chunk.
            gap = min(n_orders - submitted, backlog - (submitted - done))
            while gap > 0:
                seed += 1
                n = _submit(_payloads(min(INTAKE_CHUNK, gap), seed), settings)
                submitted += n
                gap = gap - n if n else 0  # nothing accepted: count again before more
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                console.print(f"soak: {done}/{n_orders} done, "
                              f"{rss.samples[-1]['total_mb'] if rss.samples else 0} MB "
                              f"in worker processes")
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        rss.sample()
    samples = rss.samples
    tenth = max(1, len(samples) // 10)
    first = samples[tenth : 2 * tenth] or samples[:tenth]  # skip the first tenth: warm-up
    last = samples[-tenth:]

    def mean(rows: list[dict[str, float]]) -> float:
        return round(sum(r["total_mb"] for r in rows) / max(len(rows), 1), 1)

    result: dict[str, Any] = {
        "orders": n_orders, "workers": workers, "concurrency": concurrency,
        "database": settings.database_url.split("@")[-1], "seconds": round(elapsed, 1),
        "orders_per_s": round(n_orders / elapsed, 1),
        "rss_total_mb_early": mean(first), "rss_total_mb_late": mean(last),
        "rss_growth_pct": round(100 * (mean(last) - mean(first)) / max(mean(first), 1e-9), 1),
        "peak_worker_rss_mb": rss.peak_process_mb, "samples": samples,
        "server_autovacuum": vacuum.autovacuum, "vacuums": vacuum.runs,
    }
    out_dir = out_dir or settings.var_dir / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = out_dir / f"soak-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2))
    result["json_file"] = str(json_path)
    result["plot_file"] = str(plot_soak(result, out_dir / f"soak-{stamp}.png"))
    table = Table(title=f"orderfleet bench soak: {n_orders} orders, {workers} worker processes")
    table.add_column("t, s", justify="right")
    table.add_column("worker RSS total, MB", justify="right")
    table.add_column("largest process, MB", justify="right")
    step = max(1, len(samples) // 12)
    for r in samples[::step] + ([samples[-1]] if samples and len(samples) % step != 1 else []):
        table.add_row(f"{r['t']:.0f}", f"{r['total_mb']:.1f}", f"{r['max_mb']:.1f}")
    console.print(table)
    console.print(f"soak: {n_orders} orders in {elapsed:.0f}s; worker RSS "
                  f"{result['rss_total_mb_early']} -> {result['rss_total_mb_late']} MB "
                  f"({result['rss_growth_pct']:+}%)")
    if vacuum.runs:
        console.print(f"soak: the server's autovacuum is off: {len(vacuum.runs)} VACUUM "
                      f"(ANALYZE) runs of the run's own tables took "
                      f"{sum(v['s'] for v in vacuum.runs):.0f}s in all")
    return result


def plot_soak(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    t = [r["t"] for r in result["samples"]]
    ax.plot(t, [r["total_mb"] for r in result["samples"]], label="all worker processes")
    ax.plot(t, [r["max_mb"] for r in result["samples"]], label="largest process")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS, MB")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title(f"worker RSS over {result['orders']} orders ({result['database']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

