"""``orderfleet bench fraud``: the fraud stage's accuracy and cost on a labelled order stream.

The stream (``sandbox.fraud_streams``) is stored through intake, then the real stage function
``tasks.fraud.check_orders`` checks it in micro-batches of ``batch_size`` in payment-time order,
on a real database and the real velocity Redis (a namespace of its own, deleted afterwards), as a
worker would: earlier approvals build the customer histories later orders are compared with.

Accuracy is the fraud score's call: an order is *flagged* when its score reaches
``fraud_review_score`` (review or reject). The review line (orders over $500 go to a person
whatever their score) is policy, not detection, so it is reported separately
(``with_value_line``): counting it would call every genuine big order a false positive.

* precision = flagged fraud / all flagged; recall = flagged fraud / all fraud;
  false-positive rate = flagged genuine / all genuine;
* per fraud pattern: its recall, and its precision against all genuine traffic
  (flagged of the pattern / (flagged of the pattern + every flagged genuine order));
* per genuine segment: its false-positive rate;
* ``ms_per_order``: the stage's CPU time in this process per order (parsing, the three
  checks, SQLAlchemy and the Redis and database clients; on SQLite the database engine too);
  ``wall_ms_per_order`` adds waiting on Redis and the database.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from config.settings import Settings
from domain.lifecycle import State
from sandbox.fraud_streams import FRAUD_PATTERNS, LEGIT_SEGMENTS, generate_stream
from workers.fleet import BENCH_REDIS_DB, claim_redis_db, reset_run_database, run_settings


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def run_fraud_bench(*, seed: int, n_orders: int, database_url: str | None = None,
                    quiet: bool = False, fraud_rate: float = 0.05) -> dict[str, Any]:
    """Generate, store and check a labelled stream; return the figures."""
    from domain.db import chunks, dispose_engines, unit_of_work
    from domain.models import OrderRow
    from domain.stock import StockLevel, set_stock_levels
    from sandbox.synthetic import generate_stock
    from tasks.fraud import check_orders, velocity_store
    from tasks.intake import persist_orders

    console = Console(stderr=True, quiet=quiet)
    url = database_url or f"sqlite:///{Settings().var_dir / 'bench-fraud.db'}"
    # Its own database and Redis db (the velocity counters), emptied: a fresh run.
    settings = run_settings("bench", BENCH_REDIS_DB, url)
    claim_redis_db(settings.fraud_redis, "bench", fresh=True)
    reset_run_database(settings, "bench")
    with unit_of_work(settings) as uow:  # warehouses decide which carrier takes a PO box
        set_stock_levels(uow, [StockLevel.model_validate(r) for r in generate_stock(seed=seed)])

    stream = generate_stream(n_orders, seed=seed, fraud_rate=fraud_rate)
    label = {o.payload["order_id"]: o for o in stream}
    ids: list[int] = []
    for part in chunks(list(range(len(stream))), 1000):
        with unit_of_work(settings) as uow:
            result = persist_orders(uow, [stream[i].payload for i in part], settings)
        if result.rejected:
            raise RuntimeError(f"intake rejected {len(result.rejected)} stream orders: "
                               f"{result.rejected[0].reason}")
        ids.extend(result.accepted)
    console.print(f"stream seed {seed}: {len(ids)} orders "
                  f"({sum(o.fraud for o in stream)} fraud), checking in batches of "
                  f"{settings.batch_size}")

    velocity = velocity_store(settings)
    cpu = wall = 0.0
    try:
        for part in chunks(sorted(ids), settings.batch_size):
            c0, w0 = time.process_time(), time.perf_counter()
            with unit_of_work(settings) as uow:
                check_orders(uow, part, settings, velocity)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
    finally:
        velocity.clear()

    with unit_of_work(settings) as uow:
        rows = uow.session.execute(select(OrderRow.source_order_id, OrderRow.state,
                                          OrderRow.fraud_score, OrderRow.fraud_reasons)).all()
    dispose_engines()
    return _figures(rows, label, settings, seed, n_orders, cpu, wall, len(ids), console)


def _figures(rows: Any, label: dict[str, Any], settings: Settings, seed: int, n_orders: int,
             cpu: float, wall: float, checked: int, console: Console) -> dict[str, Any]:
    review = settings.fraud_review_score
    per: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for source_id, state, score, _reasons in rows:
        lo = label[source_id]
        flagged = score is not None and score >= review
        held = state in (State.ON_HOLD.value, State.REJECTED.value)
        kind = "fraud" if lo.fraud else "legit"
        per[lo.pattern]["n"] += 1
        per[lo.pattern]["flagged"] += flagged
        per[lo.pattern]["rejected"] += state == State.REJECTED.value
        per[lo.pattern]["held_any"] += held
        totals[f"{kind}_n"] += 1
        totals[f"{kind}_flagged"] += flagged
        totals[f"{kind}_held_any"] += held
    fp = totals["legit_flagged"]
    patterns: dict[str, Any] = {}
    for name in FRAUD_PATTERNS:
        c = per.get(name)
        if not c:
            continue
        patterns[name] = {"fraud": True, "orders": c["n"], "flagged": c["flagged"],
                          "rejected": c["rejected"], "recall": _ratio(c["flagged"], c["n"]),
                          "precision": _ratio(c["flagged"], c["flagged"] + fp),
                          "recall_with_value_line": _ratio(c["held_any"], c["n"])}
    for name in LEGIT_SEGMENTS:
        c = per.get(name)
        if not c:
            continue
        patterns[name] = {"fraud": False, "orders": c["n"], "flagged": c["flagged"],
                          "false_positive_rate": _ratio(c["flagged"], c["n"]),
                          "held_with_value_line": c["held_any"]}
    tp = totals["fraud_flagged"]
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, totals["fraud_n"])
    fp_rate = _ratio(fp, totals["legit_n"])
    result = {
        "seed": seed,
        "orders": n_orders,
        "fraud_orders": totals["fraud_n"],
        "legit_orders": totals["legit_n"],
        "precision": precision,
        "recall": recall,
        "false_positive_rate": fp_rate,
        "ms_per_order": round(cpu * 1000 / checked, 4) if checked else None,
        "wall_ms_per_order": round(wall * 1000 / checked, 4) if checked else None,
        "batch_size": settings.batch_size,
        "review_score": review,
        "reject_score": settings.fraud_reject_score,
        "database": settings.database_url.split("@")[-1],
        "with_value_line": {
            "recall": _ratio(totals["fraud_held_any"], totals["fraud_n"]),
            "held_rate_legit": _ratio(totals["legit_held_any"], totals["legit_n"]),
            "review_line_usd": str(settings.review_threshold_usd),
        },
        "patterns": patterns,
    }
    table = Table("pattern", "orders", "flagged", "recall", "precision", "FPR")
    for name, p in patterns.items():
        table.add_row(name, str(p["orders"]), str(p["flagged"]), _pct(p.get("recall")),
                      _pct(p.get("precision")), _pct(p.get("false_positive_rate")))
    console.print(table)
    console.print(
        f"[bold]seed {seed}: precision {_pct(precision)}, recall "
        f"{_pct(recall)}, false-positive rate {_pct(fp_rate)}; "
        f"{result['ms_per_order']} ms CPU per order ({result['wall_ms_per_order']} ms wall)"
        f"[/bold]")
    return result


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v * 100:.1f}%"
