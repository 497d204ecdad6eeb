"""``orderfleet chaos``: break a supervised fleet on purpose, then check that nothing was lost
and nothing was done twice.

The run starts everything it may break: its own ``redis-server`` and its own PostgreSQL cluster
(``initdb`` in a temporary directory, as the ``postgres`` user when run as root), the sandbox
carrier, and a fleet (workers, beat) under a :class:`workers.supervisor.Supervisor` that
restarts dead processes as systemd would. Nothing of the user's is touched.

Each scenario streams synthetic orders through the fleet while it breaks something:

* ``kill-workers``: ``kill -9`` of a random worker process (a main process or a pool child),
  ``--kills`` times;
* ``redis-restart``: Redis killed and started again empty (every message lost);
* ``postgres-restart``: an immediate (crash) restart of PostgreSQL;
* ``carrier-faults``: 30% of carrier calls fail (5xx, 429, timeouts, lost answers), with a
  total outage of ``--outage-s`` in the middle;
* ``rolling-restart``: every worker in turn gets a warm shutdown (SIGTERM) and starts again.

After each: every order is in an expected state (labelled or at rest), none is lost; the
carrier's own books show no parcel charged twice; no order line holds two live reservations;
no SKU sold more units than it had, and stock is conserved; and ``recovered_s``, the seconds
from the end of the disruption (and of the stream, when it ran longer) until every order of
the scenario had settled.

``smtp-down`` stops the fleet's SMTP server for the outage while orders flow: recovered when
every labelled order has its post-purchase e-mail; ``duplicate_emails`` counts an order mailed
twice and ``emails_missing`` a labelled order not mailed (every scenario, once the e-mails had
the settle timeout to follow their orders). ``emails_uncertain`` counts e-mails the fleet
marked uncertain (the connection broke while the server took it): not re-sent, left to a
person, and neither missing nor duplicated if the server's books say otherwise.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kombu.exceptions
import psutil
import psycopg
import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from benchmarks.carrier import FLEET_SETTINGS as CARRIER_BENCH_SETTINGS
from config.settings import Settings
from domain.carriers import SandboxCarrier
from domain.lifecycle import LABELLED_OR_LATER, LABELLED_OR_SETTLED, values
from sandbox.smtp import read_messages
from workers.fleet import Fleet, free_port, port_free, use_settings
from workers.supervisor import Supervisor

EXPECTED = tuple(values(LABELLED_OR_SETTLED))
# Orders that get a post-purchase e-mail (a non-core job after the label).
MAILED = tuple(values(LABELLED_OR_LATER))
STORE = "chaos-store"
# Production defaults for everything that decides recovery (sweep interval, stage deadline,
# broker epoch check, missing-order grace); a fast carrier so that a run takes minutes.
FLEET_SETTINGS: dict[str, Any] = {
    k: v for k, v in CARRIER_BENCH_SETTINGS.items()
    if k not in ("sweep_interval_s", "stage_deadline_s")}


@dataclass(frozen=True)
class ChaosOptions:
    orders: int = 400
    kills: int = 50
    outage_s: float = 60.0
    workers: int = 2
    concurrency: int = 2
    port_base: int | None = None  # Redis on port_base, PostgreSQL on port_base + 1
    stream_s: float = 20.0  # orders arrive over this long
    settle_timeout_s: float = 600.0
    seed: int = 13
    overrides: dict[str, Any] = field(default_factory=dict)  # settings (e.g. to compare)

    def short(self) -> ChaosOptions:
        """The form CI runs: every scenario, fewer orders, kills and outage seconds."""
        return replace(self, orders=min(self.orders, 60), kills=min(self.kills, 6),
                       outage_s=min(self.outage_s, 8.0), stream_s=min(self.stream_s, 6.0))


# --- services of its own -------------------------------------------------------------------

class OwnRedis:
    """A redis-server of the run's own; ``restart`` brings it back empty."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port, self.log_dir = port, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("orderfleet chaos needs redis-server (apt install redis-server)")
        out = open(self.log_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxmemory-policy", "noeviction"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        _wait(lambda: _redis_up(self.url), "redis-server", 15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _redis_up(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.3).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def _pg_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"orderfleet chaos needs PostgreSQL's {name} (apt install postgresql)")
    return found


class OwnPostgres:
    """A PostgreSQL cluster of the run's own, in a temporary directory, trust auth on
    127.0.0.1 only. As root, the server runs as the ``postgres`` user (initdb refuses root)."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port, self.log_dir = port, log_dir
        self.dir = Path(tempfile.mkdtemp(prefix="orderfleet-chaos-pg-"))
        self.data = self.dir / "data"
        self.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/orderfleet_chaos"

    def _run(self, *args: str) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*prefix, *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120)

    def start(self) -> None:
        self._run(_pg_binary("initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8")
        self._ctl("start")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "orderfleet_chaos"')

    def _ctl(self, action: str, *extra: str) -> None:
        self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                  "-l", str(self.dir / "server.log"),
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                        "-c max_connections=200 -c fsync=off",
                  *extra, action)

    def restart(self) -> None:
        """An immediate shutdown (no checkpoint: crash recovery at start), then start."""
        self._ctl("restart", "-m", "immediate")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._ctl("stop", "-m", "fast")
        if (self.dir / "server.log").exists():
            shutil.copy(self.dir / "server.log", self.log_dir / "postgres.log")
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait(ready: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s")
        time.sleep(0.1)


# --- the run -------------------------------------------------------------------------------

@dataclass
class Run:
    settings: Settings
    fleet: Fleet
    supervisor: Supervisor
    redis: OwnRedis
    postgres: OwnPostgres
    carrier: SandboxCarrier
    opts: ChaosOptions
    console: Console
    rng: random.Random
    initial_stock: dict[tuple[str, str], int] = field(default_factory=dict)
    next_id: int = 1


class Stream:
    """Orders submitted at a steady pace in a thread, through any disruption: a chunk that
    fails (database or broker away) is submitted again (intake is idempotent per order id)."""

    def __init__(self, run: Run, n: int, over_s: float) -> None:
        from sandbox.synthetic import generate_orders

        self.payloads = generate_orders(n, seed=run.rng.randrange(1 << 30), store=STORE,
                                        invalid_rate=0.0, high_value_rate=0.0, risky_rate=0.0,
                                        shopify_rate=0.0, start_id=run.next_id)
        run.next_id += n
        self.run, self.over_s = run, over_s
        self.failures = 0
        self.thread = threading.Thread(target=self._submit, name="order-stream", daemon=True)

    @property
    def source_ids(self) -> list[str]:
        return [str(p["order_id"]) for p in self.payloads]

    def start(self) -> Stream:
        self.thread.start()
        return self

    def _submit(self) -> None:
        from tasks.intake import submit_orders

        chunk = 10
        pause = self.over_s / max(len(self.payloads) / chunk, 1)
        for i in range(0, len(self.payloads), chunk):
            part = self.payloads[i:i + chunk]
            while True:
                try:
                    submit_orders(part, settings=self.run.settings)
                    break
                except Exception:  # noqa: BLE001 - a disruption in progress: try again
                    self.failures += 1
                    time.sleep(0.5)
            time.sleep(pause)

    def join(self) -> None:
        self.thread.join()


def _orders(run: Run, stream: Stream) -> dict[str, tuple[int, str, str]]:
    """source order id -> (order id, state, carrier reference) of the stream's orders.

    A split order (settled itself) is as far as its parts: the state of a part still on its
    way, else of a labelled one (its e-mail is the order's), else ``split``.
    """
    orders, _ = _orders_and_parts(run, stream)
    return orders


def _orders_and_parts(run: Run, stream: Stream
                      ) -> tuple[dict[str, tuple[int, str, str]], list[tuple[int, str, str]]]:
    """:func:`_orders`, and (order id, state, carrier reference) of their parts."""
    from domain.db import unit_of_work
    from domain.models import OrderRow

    ids = stream.source_ids
    with unit_of_work(run.settings) as uow:
        rows = uow.session.execute(
            select(OrderRow.source_order_id, OrderRow.id, OrderRow.state, OrderRow.store)
            .where(OrderRow.store == STORE, OrderRow.source_order_id.in_(ids))).all()
        split = [r.id for r in rows if r.state == "split"]
        part_rows = uow.session.execute(
            select(OrderRow.parent_id, OrderRow.id, OrderRow.state, OrderRow.store,
                   OrderRow.source_order_id)
            .where(OrderRow.parent_id.in_(split)).order_by(OrderRow.id)).all() if split else []
    part_states: dict[int, list[str]] = {}
    for p in part_rows:
        part_states.setdefault(p.parent_id, []).append(p.state)

    def state_of(order_id: int, state: str) -> str:
        states = part_states.get(order_id, [])
        return next((s for s in states if s not in EXPECTED),
                    next((s for s in states if s in MAILED), state))

    orders = {r.source_order_id: (r.id, state_of(r.id, r.state), f"{r.store}/{r.source_order_id}")
              for r in rows}
    parts = [(p.id, p.state, f"{p.store}/{p.source_order_id}") for p in part_rows]
    return orders, parts


def _settled_count(run: Run, stream: Stream) -> int:
    return sum(1 for _, state, _ in _orders(run, stream).values() if state in EXPECTED)


def _settle(run: Run, stream: Stream) -> float | None:
    """Wait until every order of the stream is in an expected state; when (time.time())."""
    deadline = time.monotonic() + run.opts.settle_timeout_s
    n = len(stream.payloads)
    while time.monotonic() < deadline:
        try:
            orders = _orders(run, stream)
        except Exception:  # noqa: BLE001 - the database may still be coming back
            time.sleep(0.5)
            continue
        if len(orders) == n and all(state in EXPECTED for _, state, _ in orders.values()):
            return time.time()
        time.sleep(0.25)
    return None


def check(run: Run, stream: Stream) -> dict[str, Any]:
    """What went wrong for the stream's orders, from our database and the carrier's books."""
    from domain.db import unit_of_work
    from domain.models import Reservation, ReservationStatus, Shipment, Stock

    orders, parts = _orders_and_parts(run, stream)
    lost = len(stream.payloads) - sum(1 for _, st, _ in orders.values() if st in EXPECTED)
    # Labels, reservations and shipments of a split order are its parts'.
    refs = {ref for _, _, ref in [*orders.values(), *parts]}
    order_ids = [oid for oid, _, _ in [*orders.values(), *parts]]
    books = run.carrier.books()
    twice = {r: n for r, n in books["references_charged_twice"].items() if r in refs}
    live = (ReservationStatus.ACTIVE, ReservationStatus.CONSUMED)
    with unit_of_work(run.settings) as uow:
        s = uow.session
        dup_res = s.execute(
            select(Reservation.order_line_id).where(Reservation.order_id.in_(order_ids),
                                                    Reservation.status.in_(live))
            .group_by(Reservation.order_line_id).having(func.count() > 1)).all()
        shipments = int(s.execute(select(func.count()).select_from(Shipment).where(
            Shipment.order_id.in_(order_ids), Shipment.label_id.is_not(None))).scalar_one())
        units = {(r.sku, r.warehouse, r.status): int(r.units) for r in s.execute(
            select(Reservation.sku, Reservation.warehouse, Reservation.status,
                   func.sum(Reservation.quantity).label("units"))
            .group_by(Reservation.sku, Reservation.warehouse, Reservation.status))}
        stock = {(r.sku, r.warehouse): (r.on_hand, r.reserved)
                 for r in s.execute(select(Stock.sku, Stock.warehouse, Stock.on_hand,
                                           Stock.reserved))}
    oversold = drift = 0
    for key, initial in run.initial_stock.items():
        active = units.get((*key, ReservationStatus.ACTIVE), 0)
        consumed = units.get((*key, ReservationStatus.CONSUMED), 0)
        on_hand, reserved = stock.get(key, (0, 0))
        oversold += max(0, active + consumed - initial)
        # Units leave the shelf when a label is bought; what is on it plus what left is
        # what there was, and what is reserved is what the active reservations hold.
        drift += abs(on_hand + consumed - initial) + abs(reserved - active)
    carrier_labels = sum(n for r, n in books["per_reference"].items() if r in refs)
    mails, mailed = _mails(run, order_ids)
    uncertain = _uncertain(run, order_ids)
    labelled = {oid for oid, st, _ in orders.values() if st in MAILED}
    return {"orders": len(stream.payloads), "lost": lost,
            "duplicate_labels": sum(n - 1 for n in twice.values()),
            "duplicate_reservations": len(dup_res), "oversold_units": oversold,
            "duplicate_emails": mails - len(mailed),
            "emails_missing": len(labelled - mailed - uncertain),
            "emails_uncertain": len(uncertain),
            "stock_drift_units": drift, "labels_charged": carrier_labels,
            "shipments_labelled": shipments,
            "states": _count(st for _, st, _ in orders.values())}


def _count(states: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out


# --- scenarios -----------------------------------------------------------------------------
# Each breaks something while ``stream`` runs and returns when the disruption ended.

def _worker_pids(run: Run) -> tuple[list[int], list[int]]:
    """(main processes, pool children) of the live workers."""
    mains: list[int] = []
    children: list[int] = []
    for name, proc in list(run.fleet.procs.items()):
        if name.startswith("worker") and proc.poll() is None:
            mains.append(proc.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                children.extend(c.pid for c in psutil.Process(proc.pid).children())
    return mains, children


def kill_workers(run: Run, stream: Stream) -> float:
    """kill -9 of a random worker process, main processes and pool children in turn (a dead
    child is replaced by its main process; a dead main by the supervisor)."""
    gap = max(run.opts.stream_s / max(run.opts.kills, 1), 0.3)
    for i in range(run.opts.kills):
        mains, children = _worker_pids(run)
        pids = (mains if i % 2 == 0 else children) or mains or children
        if pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.rng.choice(pids), signal.SIGKILL)
        time.sleep(gap)
    return time.time()


def redis_restart(run: Run, stream: Stream) -> float:
    # Mid-burst: every order submitted at once, Redis lost while most still wait in queues.
    stream.join()
    _wait(lambda: _settled_count(run, stream) >= len(stream.payloads) // 4, "a quarter settled",
          run.opts.settle_timeout_s)
    run.redis.kill()
    time.sleep(1.0)
    run.redis.start()  # empty: no persistence
    return time.time()


def postgres_restart(run: Run, stream: Stream) -> float:
    time.sleep(run.opts.stream_s / 2)
    run.postgres.restart()
    return time.time()


def carrier_faults(run: Run, stream: Stream) -> float:
    from benchmarks.carrier import mixed_faults

    run.carrier.set_faults(**mixed_faults(0.3), seed=run.rng.randrange(1 << 30))
    time.sleep(run.opts.stream_s / 3)
    run.carrier.set_faults(error_rate=1.0, duration_s=run.opts.outage_s)
    time.sleep(run.opts.outage_s)
    end = time.time()
    run.carrier.set_faults(**mixed_faults(0.3), seed=run.rng.randrange(1 << 30))
    stream.join()
    time.sleep(2.0)
    run.carrier.clear_faults()
    return end


def rolling_restart(run: Run, stream: Stream) -> float:
    from workers.app import app

    for name in sorted(n for n in run.fleet.procs if n.startswith("worker")):
        with run.supervisor.paused(name):
            proc = run.fleet.procs[name]
            proc.send_signal(signal.SIGTERM)  # warm shutdown: finish, hand back the rest
            proc.wait(run.settings.task_time_limit_s + 30)
            run.fleet._spawn(name, run.fleet.commands[name])
            node = run.fleet.commands[name][run.fleet.commands[name].index("-n") + 1]
            prefix = node.split("@")[0] + "@"

            def back(p: str = prefix) -> bool:
                try:
                    # A fresh connection: pooled ones may predate a Redis restart.
                    with app.connection_for_write() as conn:
                        replies = app.control.ping(timeout=0.5, connection=conn) or []
                except (redis.ConnectionError, OSError, kombu.exceptions.OperationalError):
                    return False
                return any(k.startswith(p) for r in replies for k in r)

            _wait(back, f"{name} back", 60)
    return time.time()


def smtp_down(run: Run, stream: Stream) -> float:
    """The mail server away for outage_s while orders flow: post-purchase mail waits (retried,
    never dropped) and goes out once, when it is back."""
    with run.supervisor.paused("smtp"):
        proc = run.fleet.procs["smtp"]
        time.sleep(run.opts.stream_s / 4)
        proc.terminate()
        proc.wait(10)
        time.sleep(run.opts.outage_s)
        run.fleet._spawn("smtp", run.fleet.commands["smtp"])
        _wait(lambda: not port_free("127.0.0.1", run.settings.smtp_port), "smtp back", 20)
    return time.time()


def _mails(run: Run, order_ids: list[int]) -> tuple[int, set[int]]:
    """(post-purchase e-mails the SMTP sink received for these orders, the orders mailed)."""
    wanted = {f"{oid}:post_purchase_email": oid for oid in order_ids}
    jobs = [wanted[m["job"]] for m in read_messages(run.fleet.mail_file) if m["job"] in wanted]
    return len(jobs), set(jobs)


def _uncertain(run: Run, order_ids: list[int]) -> set[int]:
    """Orders whose post-purchase e-mail the fleet marked uncertain (the mail server may have
    taken it when the connection broke): never re-sent by the fleet, left to a person."""
    from domain.db import unit_of_work
    from domain.models import NoncoreJob
    from domain.noncore import UNCERTAIN

    with unit_of_work(run.settings) as uow:
        return set(uow.session.scalars(select(NoncoreJob.order_id).where(
            NoncoreJob.order_id.in_(order_ids), NoncoreJob.kind == "post_purchase_email",
            NoncoreJob.outcome == UNCERTAIN)))


def _unmailed(run: Run, stream: Stream) -> set[int]:
    """Labelled orders of the stream with neither an e-mail nor an uncertain one."""
    labelled = [oid for oid, st, _ in _orders(run, stream).values() if st in MAILED]
    return set(labelled) - _mails(run, labelled)[1] - _uncertain(run, labelled)


def _mail_settle(run: Run, stream: Stream) -> float | None:
    """Wait until every labelled order of the stream has its post-purchase e-mail."""
    deadline = time.monotonic() + run.opts.settle_timeout_s
    while time.monotonic() < deadline:
        if not _unmailed(run, stream):
            return time.time()
        time.sleep(0.5)
    return None


# Orders arrive over stream_s, except where the scenario wants a burst.
BURST = frozenset({"redis-restart"})

SCENARIOS: dict[str, Callable[[Run, Stream], float]] = {
    "kill-workers": kill_workers,
    "redis-restart": redis_restart,
    "postgres-restart": postgres_restart,
    "carrier-faults": carrier_faults,
    "rolling-restart": rolling_restart,
    "smtp-down": smtp_down,
}
# Scenarios that break the non-core side: recovered when every labelled order has its e-mail.
MAIL = frozenset({"smtp-down"})


def run_chaos(names: list[str], opts: ChaosOptions, *, quiet: bool = False) -> dict[str, Any]:
    from domain.db import dispose_engines, unit_of_work
    from domain.migrate import upgrade
    from domain.stock import StockLevel, set_stock_levels
    from sandbox.synthetic import generate_stock

    console = Console(stderr=True, quiet=quiet, width=140)
    started = time.time()
    redis_port = opts.port_base or free_port()
    pg_port = opts.port_base + 1 if opts.port_base else free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="orderfleet-chaos-logs-"))
    own_redis, own_pg = OwnRedis(redis_port, log_dir), OwnPostgres(pg_port, log_dir)
    results: list[dict[str, Any]] = []
    try:
        own_redis.start()
        own_pg.start()
        settings = Settings(broker_url=own_redis.url, database_url=own_pg.url,
                            carrier_url=f"http://127.0.0.1:{free_port()}",
                            var_dir=log_dir / "var", smtp_port=free_port(),
                            marketing_url=f"http://127.0.0.1:{free_port()}",
                            **{**FLEET_SETTINGS, **opts.overrides})
        settings = use_settings(settings)
        dispose_engines()
        upgrade(settings)
        fleet = Fleet(settings, workers=opts.workers, concurrency=opts.concurrency,
                      carrier_time_scale=36_000.0, log_dir=log_dir, loglevel="warning")
        console.print(f"chaos: Redis :{redis_port}, PostgreSQL :{pg_port} (its own), "
                      f"logs in {log_dir}")
        with fleet, Supervisor(fleet) as supervisor:
            run = Run(settings, fleet, supervisor, own_redis, own_pg,
                      SandboxCarrier(settings.carrier_url), opts, console,
                      random.Random(opts.seed))
            levels = generate_stock(seed=opts.seed, units_per_sku=max(opts.orders // 4, 10))
            run.initial_stock = {(r["sku"], r["warehouse"]): int(r["on_hand"]) for r in levels}
            with unit_of_work(settings) as uow:
                set_stock_levels(uow, [StockLevel.model_validate(r) for r in levels])
            for name in names:
                results.append(_scenario(run, name))
                _print(console, results)
    finally:
        own_pg.stop()
        own_redis.stop()
    ok = all(r["lost"] == 0 and r["duplicate_labels"] == 0 and r["duplicate_reservations"] == 0
             and r["duplicate_emails"] == 0 and r["emails_missing"] == 0
             and r["oversold_units"] == 0 and r["stock_drift_units"] == 0 for r in results)
    return {"scenarios": results, "ok": ok, "seconds": round(time.time() - started, 1),
            "options": {"orders": opts.orders, "kills": opts.kills, "outage_s": opts.outage_s,
                        "workers": opts.workers, "concurrency": opts.concurrency,
                        "settings": opts.overrides},
            "logs": str(log_dir)}


def _scenario(run: Run, name: str) -> dict[str, Any]:
    over_s = 0.0 if name in BURST else run.opts.stream_s
    run.console.print(f"[bold]{name}[/bold]: {run.opts.orders} orders over {over_s:.0f}s")
    restarts_before = len(run.supervisor.restarts)
    t0 = time.time()
    stream = Stream(run, run.opts.orders, over_s).start()
    disruption_end = SCENARIOS[name](run, stream)
    stream.join()
    # Recovery is counted once the disruption is over and the last order has arrived.
    over = max(disruption_end, time.time())
    settled = _settle(run, stream)
    if settled is not None and name in MAIL:
        settled = _mail_settle(run, stream)
    elif settled is not None:
        _mail_settle(run, stream)  # e-mails follow their orders; count them once they could
    result = {"name": name, **check(run, stream),
              "recovered_s": None if settled is None else round(max(settled - over, 0.0), 1),
              "seconds": round(time.time() - t0, 1),
              "restarts": len(run.supervisor.restarts) - restarts_before,
              "submit_retries": stream.failures}
    return result


def _print(console: Console, results: list[dict[str, Any]]) -> None:
    table = Table("scenario", "orders", "lost", "duplicate labels", "duplicate reservations",
                  "oversold", "stock drift", "e-mails twice / missing / uncertain",
                  "recovered (s)", "restarts", "seconds")
    for r in results:
        table.add_row(r["name"], str(r["orders"]), str(r["lost"]), str(r["duplicate_labels"]),
                      str(r["duplicate_reservations"]), str(r["oversold_units"]),
                      str(r["stock_drift_units"]),
                      f"{r['duplicate_emails']} / {r['emails_missing']} / {r['emails_uncertain']}",
                      "not settled" if r["recovered_s"] is None else f"{r['recovered_s']:.1f}",
                      str(r["restarts"]), f"{r['seconds']:.0f}")
    console.print(table)
