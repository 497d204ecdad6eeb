"""``orderfleet bench stages``: CPU per order in each stage, in one process.

The real stage tasks (intake's ``submit_orders``, then ``fraud.check``, ``inventory.reserve``,
``sharding.assign`` and ``labels.buy``) run one after the other in this process, against a real
PostgreSQL (or SQLite) database, the real velocity Redis and the sandbox carrier (a child
process, so its CPU is not counted). Each stage is handed the very messages the previous one
enqueued: a task sender that records them replaces Celery's, so the figures are the stages' own
work (SQL, Redis, JSON, rules), without the broker and the worker's bookkeeping, which
``orderfleet bench`` measures.

A warm-up round (``--warmup`` orders) runs first, so statement caches, prepared statements and
imports are paid before anything is measured, as in a worker that has been running a while.

``ms_per_order`` is ``time.process_time`` (this process's CPU, every thread) per order;
``wall_ms_per_order`` adds the waits on PostgreSQL, Redis and the carrier. On a shared machine
the CPU figure is the steadier one; ``--callgrind`` gives instruction counts that do not depend
on the machine's load at all::

    valgrind --tool=callgrind --instr-atstart=no \\
        .venv/bin/python -m workers.cli bench stages --orders 300 --warmup 100 --callgrind

(instrumentation is switched on around each stage with ``callgrind_control``, so start-up and
the warm-up run at near native speed; each stage's dump, ``callgrind.out.<pid>.<n>`` in the
working directory, is read back and reported as ``instructions_per_order``; open one with
``callgrind_annotate`` or KCachegrind to see where they went). ``--profile cprofile`` or
``--profile pyinstrument`` writes a profile per stage to ``--profile-dir``.
"""

from __future__ import annotations

import cProfile
import gc
import glob
import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import event
from sqlalchemy.engine import Engine

from config.settings import Settings
from workers.fleet import (
    BENCH_REDIS_DB,
    Fleet,
    claim_redis_db,
    reset_run_database,
    run_settings,
    use_settings,
)

STAGES = ("intake", "fraud", "inventory", "sharding", "labels")
# Intake takes orders as a store's feed or the HTTP door would hand them over.
INTAKE_CHUNK = 1000


class MessageLog:
    """A task sender that records messages instead of sending them (by task name)."""

    def __init__(self) -> None:
        self.pending: dict[str, list[tuple[Any, ...]]] = defaultdict(list)

    def __call__(self, task: str, args: tuple[Any, ...], options: dict[str, Any]) -> None:
        self.pending[task].append(args)

    def take(self, task: str) -> list[tuple[Any, ...]]:
        return self.pending.pop(task, [])


class _Callgrind:
    """Switches callgrind's collection on around a stage and reads the stage's dump back."""

    def __init__(self) -> None:
        self.pid = str(os.getpid())
        self.control = shutil.which("callgrind_control")
        if self.control is None:
            raise RuntimeError("callgrind_control not found (Debian package valgrind)")

    def _run(self, *args: str) -> None:
        subprocess.run([str(self.control), *args, self.pid], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self._run("--zero")
        self._run("--instr=on")

    def stop(self, stage: str) -> int:
        self._run("--instr=off")
        before = set(glob.glob(f"*.{self.pid}*"))
        self._run(f"--dump=stage-{stage}")
        return _read_totals(before, self.pid)


def _read_totals(before: set[str], pid: str) -> int:
    """Instructions (Ir) of the dump callgrind just wrote (its ``totals:`` line)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = set(glob.glob(f"*.{pid}*"))
        for path in sorted(now - before):
            text = Path(path).read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise TimeoutError("callgrind wrote no dump: run under valgrind --tool=callgrind")


class _Meter:
    """CPU, wall time and (optionally) a profile or instruction count per stage."""

    def __init__(self, profile: str | None, profile_dir: Path, callgrind: bool) -> None:
        self.profile = profile
        self.profile_dir = profile_dir
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.instructions: dict[str, int] = defaultdict(int)
        # Statements the database executes (an executemany counts each row: psycopg sends
        # one statement per row; a multi-row VALUES batch counts once), the figure
        # PostgreSQL's own CPU per order follows.
        self.statements: dict[str, int] = defaultdict(int)
        self.callgrind = _Callgrind() if callgrind else None
        self.enabled = False
        self._profilers: dict[str, Any] = {}
        self._current: str | None = None
        event.listen(Engine, "before_cursor_execute", self._count)

    def _count(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        if self._current is not None:
            rows = executemany and isinstance(parameters, list | tuple)
            self.statements[self._current] += len(parameters) if rows else 1

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        # A collection of what earlier stages left: the cyclic GC otherwise runs wherever the
        # allocation count happens to trip it, moving ~0.3M instructions between stages.
        gc.collect()
        prof = self._profiler(name)
        if self.callgrind:
            self.callgrind.start()
        if prof is not None:
            prof.enable() if isinstance(prof, cProfile.Profile) else prof.start()
        c0, w0 = time.process_time(), time.perf_counter()
        self._current = name
        try:
            yield
        finally:
            self._current = None
            self.cpu[name] += time.process_time() - c0
            self.wall[name] += time.perf_counter() - w0
            if prof is not None:
                prof.disable() if isinstance(prof, cProfile.Profile) else prof.stop()
            if self.callgrind:
                self.instructions[name] += self.callgrind.stop(name)

    def _profiler(self, name: str) -> Any:
        if self.profile is None:
            return None
        if name not in self._profilers:
            if self.profile == "cprofile":
                self._profilers[name] = cProfile.Profile()
            else:
                from pyinstrument import Profiler

                self._profilers[name] = Profiler(interval=0.0005)
        return self._profilers[name]

    def write_profiles(self) -> list[str]:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, prof in self._profilers.items():
            if isinstance(prof, cProfile.Profile):
                path = self.profile_dir / f"{name}.prof"
                prof.dump_stats(path)
            else:
                path = self.profile_dir / f"{name}.html"
                path.write_text(prof.output_html())
                (self.profile_dir / f"{name}.txt").write_text(
                    prof.output_text(unicode=False, color=False))
            written.append(str(path))
        return written


def _drive(n: int, first_seed: int, settings: Settings, messages: MessageLog,
           meter: _Meter) -> dict[str, int]:
    """Push ``n`` synthetic orders through every stage; return how many reached each end."""
    from domain.db import unit_of_work
    from domain.pipeline import ASSIGN_WAVES, BUY_LABELS, FRAUD_CHECK, RESERVE, label_waves
    from sandbox.synthetic import generate_orders
    from tasks.fraud import check
    from tasks.intake import submit_orders
    from tasks.inventory import reserve
    from tasks.labels import buy
    from tasks.sharding import assign, close_waves_older_than

    # Valid, ordinary orders: every one can go all the way to a label.
    # Each round's order numbers of their own: intake would drop repeats as duplicates.
    payloads = generate_orders(n, seed=first_seed, invalid_rate=0.0, high_value_rate=0.0,
                               risky_rate=0.0, start_id=first_seed * 1_000_000 + 1)
    accepted = 0
    with meter.stage("intake"):
        for i in range(0, n, INTAKE_CHUNK):
            accepted += len(submit_orders(payloads[i : i + INTAKE_CHUNK],
                                          settings=settings).accepted)
    stage_tasks: list[tuple[str, str, Callable[..., Any]]] = [
        ("fraud", FRAUD_CHECK, check), ("inventory", RESERVE, reserve),
        ("sharding", ASSIGN_WAVES, assign)]
    for stage, name, task in stage_tasks:
        with meter.stage(stage):
            for args in messages.take(name):
                task(*args)
    # The beat closes a wave that is not full after wave_max_age_s: here, at once.
    with meter.stage("sharding"), unit_of_work(settings) as uow:
        label_waves(uow, close_waves_older_than(uow, 0.0))
    label_messages = messages.take(BUY_LABELS)
    with meter.stage("labels"):
        for args in label_messages:
            buy(*args)
    waves = sum(len(a[0]) if isinstance(a[0], list) else 1 for a in label_messages)
    return {"accepted": accepted, "waves": waves, "label_messages": len(label_messages)}


def run_stage_profile(*, n_orders: int, warmup: int, database_url: str | None,
                      carrier_port: int | None = None, profile: str | None = None,
                      profile_dir: Path | None = None, callgrind: bool = False,
                      quiet: bool = False) -> dict[str, Any]:
    """Run the stages on ``warmup`` then ``n_orders`` orders; return CPU per order per stage."""
    from sqlalchemy import func, select

    from domain.db import dispose_engines, unit_of_work, use_task_sender
    from domain.lifecycle import State
    from domain.models import OrderRow
    from domain.stock import StockLevel, set_stock_levels
    from sandbox.synthetic import generate_stock

    console = Console(stderr=True, quiet=quiet)
    url = database_url or f"sqlite:///{Settings().var_dir / 'bench-stages.db'}"
    overrides: dict[str, Any] = {}
    if carrier_port is not None:
        overrides["carrier_url"] = f"http://127.0.0.1:{carrier_port}"
    settings = use_settings(run_settings("bench", BENCH_REDIS_DB, url, **overrides))
    claim_redis_db(settings.broker_url, "bench", fresh=True)
    reset_run_database(settings, "bench")
    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel.model_validate(r) for r in
                               generate_stock(seed=7, units_per_sku=n_orders + warmup)])
    messages = MessageLog()
    use_task_sender(messages)  # after workers.app installed Celery's: record, do not send
    meter = _Meter(profile, profile_dir or settings.var_dir / "profiles", callgrind)
    fleet = Fleet(settings, workers=0, beat=False, owner=None, carrier=True)
    try:
        fleet.start_carrier()
        if warmup:
            _drive(warmup, 1001, settings, messages, meter)
        with unit_of_work(settings) as uow:
            first_id = uow.session.execute(select(func.max(OrderRow.id))).scalar_one() or 0
        meter.enabled = True
        counts = _drive(n_orders, 7, settings, messages, meter)
    finally:
        fleet.stop()
        dispose_engines()
    with unit_of_work(settings) as uow:
        by_state = {state: int(n) for state, n in uow.session.execute(
            select(OrderRow.state, func.count()).where(OrderRow.id > first_id)
            .group_by(OrderRow.state)).all()}
    stages = {}
    for stage in STAGES:
        row: dict[str, Any] = {
            "ms_per_order": round(meter.cpu[stage] * 1000 / n_orders, 3),
            "wall_ms_per_order": round(meter.wall[stage] * 1000 / n_orders, 3),
            "statements_per_order": round(meter.statements[stage] / n_orders, 2),
        }
        if callgrind:
            row["instructions_per_order"] = round(meter.instructions[stage] / n_orders)
        stages[stage] = row
    result: dict[str, Any] = {
        "orders": n_orders,
        "warmup_orders": warmup,
        "database": settings.database_url.split("@")[-1],
        "batch_size": settings.batch_size,
        "wave_size": settings.wave_size,
        # The fraud check may hold an ordinary synthetic order for review now and then.
        "labelled": by_state.get(State.LABELLED.value, 0),
        "by_state": by_state,
        "waves": counts["waves"],
        "label_messages": counts["label_messages"],
        "stages": stages,
        "total_ms_per_order": round(sum(s["ms_per_order"] for s in stages.values()), 3),
        "total_statements_per_order": round(
            sum(s["statements_per_order"] for s in stages.values()), 2),
    }
    if profile:
        result["profiles"] = meter.write_profiles()
    table = Table(title=f"CPU per order per stage ({n_orders} orders, {result['database']})")
    table.add_column("stage")
    table.add_column("CPU ms/order", justify="right")
    table.add_column("wall ms/order", justify="right")
    table.add_column("SQL statements/order", justify="right")
    if callgrind:
        table.add_column("instructions/order", justify="right")
    for stage, row in stages.items():
        cells = [stage, f"{row['ms_per_order']:.3f}", f"{row['wall_ms_per_order']:.3f}",
                 f"{row['statements_per_order']:.2f}"]
        if callgrind:
            cells.append(f"{row['instructions_per_order']:,}")
        table.add_row(*cells)
    table.add_row("total", f"{result['total_ms_per_order']:.3f}", "",
                  f"{result['total_statements_per_order']:.2f}", *([""] if callgrind else []))
    console.print(table)
    console.print(f"{result['labelled']} of {n_orders} orders labelled in {counts['waves']} waves "
                  f"({counts['label_messages']} label messages)")
    return result
