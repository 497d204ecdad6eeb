"""SKU health: the reservation failure rate per SKU over a sliding window, and freezing.

Ops practice (FIELD-NOTES): a SKU whose reservations fail for more than 1% of attempts is
frozen, because failures mean the storefront sells stock the warehouse does not have (a broken
stock sync, a mis-keyed SKU, an oversold promotion). A frozen SKU's new orders are held for a
person, an alert is raised, and ``orderfleet sku unfreeze`` resumes the held orders.

An *attempt* is the first reservation try of an order (from ``fraud_checked``) for each of its
SKUs: it *fails* for a SKU no warehouse had enough of. Re-tries of backordered orders are not
attempts, so a long backorder queue cannot freeze a SKU by itself.

The window is the last ``sku_freeze_window`` attempts, stored with the SKU as one character per
attempt. The SKU freezes when more than ``sku_freeze_failure_rate`` x window of them failed:
a young SKU's missing attempts count as successes, so three failures among its first ten
attempts freeze it at the defaults (1% of 200) rather than a single unlucky one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session

from config.settings import Settings
from domain.alerts import raise_alert, resolve_alert
from domain.clock import utcnow
from domain.db import any_of, array_value, insert_ignoring_conflicts
from domain.lifecycle import Move, State, apply_transitions
from domain.models import OrderRow, SkuHealth, SkuHold, Stock, sku_health_table, sku_holds_table

log = logging.getLogger(__name__)

FAILED, RESERVED = "1", "0"
ALERT_KIND = "sku_frozen"
HOLD_PREFIX = "frozen SKU"


def allowed_failures(settings: Settings) -> int:
    """The most failures the window may hold without freezing the SKU."""
    # The epsilon keeps 0.01 x 200 at 2, not 1.9999999.
    return math.floor(settings.sku_freeze_failure_rate * settings.sku_freeze_window + 1e-9)


def over_the_line(recent: str, settings: Settings) -> bool:
    """True when the window's failures exceed the configured rate."""
    window = recent[-settings.sku_freeze_window:]
    return window.count(FAILED) > allowed_failures(settings)


def freeze_reason(recent: str, settings: Settings) -> str:
    """Why the window froze the SKU, in words for ops (kept with the freeze and the alert)."""
    window = recent[-settings.sku_freeze_window:]
    return (f"auto: {window.count(FAILED)} of its last {settings.sku_freeze_window} "
            f"reservation attempts failed (limit {settings.sku_freeze_failure_rate:.2%})")


@dataclass
class HealthView:
    """What the reservation stage needs to know about a SKU at the start of a batch."""

    recent: str = ""
    frozen: bool = False
    reason: str | None = None


def load_health(session: Session, skus: Iterable[str]) -> dict[str, HealthView]:
    """The windows and freezes of these SKUs (no lock: the stage holds their stock rows)."""
    wanted = sorted(set(skus))
    out = {s: HealthView() for s in wanted}
    if wanted:
        for sku, recent, frozen, reason in session.execute(
            select(SkuHealth.sku, SkuHealth.recent, SkuHealth.frozen, SkuHealth.frozen_reason)
            .where(any_of(session, SkuHealth.sku, wanted))
        ):
            out[sku] = HealthView(recent, bool(frozen), reason)
    return out


@dataclass
class SkuHealthRow:
    recent: str
    attempts: int
    failures: int
    frozen: bool


def _lock_rows(session: Session, skus: list[str]) -> dict[str, SkuHealthRow]:
    """Create missing health rows, then lock all of them in byte order of SKU."""
    wanted = sorted(set(skus))
    existing = set(session.execute(
        select(SkuHealth.sku).where(any_of(session, SkuHealth.sku, wanted))).scalars())
    missing = [s for s in wanted if s not in existing]
    if missing:
        # Sorted, like the lock below: two batches creating the same SKUs cannot deadlock.
        insert_ignoring_conflicts(session, SkuHealth,
                                  [{"sku": s, "updated_at": utcnow()} for s in missing], ["sku"])
    order = (SkuHealth.sku.collate("C") if session.get_bind().dialect.name == "postgresql"
             else SkuHealth.sku)
    rows = session.execute(
        select(SkuHealth.sku, SkuHealth.recent, SkuHealth.attempts, SkuHealth.failures,
               SkuHealth.frozen)
        .where(any_of(session, SkuHealth.sku, wanted)).order_by(order).with_for_update()).all()
    return {r.sku: SkuHealthRow(r.recent or "", int(r.attempts or 0), int(r.failures or 0),
                                bool(r.frozen)) for r in rows}


_WINDOWS_PG = text("""
    UPDATE sku_health AS h
    SET recent = v.recent, attempts = v.attempts, failures = v.failures, updated_at = :now
    FROM unnest(CAST(:skus AS varchar[]), CAST(:recents AS text[]),
                CAST(:attempts AS bigint[]), CAST(:failures AS bigint[]))
         AS v(sku, recent, attempts, failures)
    WHERE h.sku = v.sku
""")


@dataclass
class AttemptsRecorded:
    froze: list[str] = field(default_factory=list)  # frozen by this call
    frozen: set[str] = field(default_factory=set)  # frozen now, among the SKUs locked


def record_attempts(session: Session, outcomes: dict[str, str], settings: Settings,
                    decided: dict[str, str] | None = None,
                    also_lock: Iterable[str] = ()) -> AttemptsRecorded:
    """Append attempt outcomes ('1' failed, '0' reserved) to the SKUs' windows; freeze those
    over the line and raise their alerts.

    ``decided``: SKUs the caller already treated as frozen (it held orders for them), frozen
    here whatever the fresh window says. ``also_lock``: SKUs whose freeze the caller relies on
    (it holds orders for them): locked too, so ``frozen`` says whether they still are.
    Locks the health rows: callers take them after their stock rows, never before.
    """
    decided = decided or {}
    skus = sorted(set(outcomes) | set(decided) | set(also_lock))
    if not skus:
        return AttemptsRecorded()
    rows = _lock_rows(session, skus)
    now = utcnow()
    windows, freezing = [], []
    for sku in skus:
        row = rows[sku]
        new = outcomes.get(sku, "")
        recent = (row.recent + new)[-settings.sku_freeze_window:]
        if new:
            windows.append({"b_sku": sku, "b_recent": recent,
                            "b_attempts": row.attempts + len(new),
                            "b_failures": row.failures + new.count(FAILED)})
        if not row.frozen and (
                sku in decided or (settings.sku_auto_freeze and over_the_line(recent, settings))):
            freezing.append({"b_sku": sku,
                             "b_reason": decided.get(sku) or freeze_reason(recent, settings)})
    table = sku_health_table
    conn = session.connection()
    if windows and conn.dialect.name == "postgresql":
        # One statement for the batch (arrays unnested into rows), not one per SKU.
        conn.execute(_WINDOWS_PG, {
            "now": now, "skus": array_value([w["b_sku"] for w in windows], "VARCHAR"),
            "recents": array_value([w["b_recent"] for w in windows], "TEXT"),
            "attempts": array_value([w["b_attempts"] for w in windows], "BIGINT"),
            "failures": array_value([w["b_failures"] for w in windows], "BIGINT")})
    elif windows:
        conn.execute(table.update().where(table.c.sku == bindparam("b_sku"))
                     .values(recent=bindparam("b_recent"), attempts=bindparam("b_attempts"),
                             failures=bindparam("b_failures"), updated_at=now), windows)
    if freezing:
        conn.execute(table.update().where(table.c.sku == bindparam("b_sku"))
                     .values(frozen=True, frozen_at=now, frozen_reason=bindparam("b_reason")),
                     freezing)
    for f in freezing:
        log.warning("froze SKU %s: %s", f["b_sku"], f["b_reason"])
        _alert(session, f["b_sku"], f["b_reason"], severity="warning")
    froze = [f["b_sku"] for f in freezing]
    return AttemptsRecorded(froze, {s for s, r in rows.items() if r.frozen} | set(froze))


def _alert(session: Session, sku: str, reason: str, *, severity: str) -> None:
    raise_alert(session, ALERT_KIND, sku,
                f"SKU {sku} is frozen ({reason}); its new orders are held. Check its stock, "
                f"then run `orderfleet sku unfreeze {sku}`",
                severity=severity, detail={"sku": sku, "reason": reason})


def check_sku(sku: str) -> str:
    """A SKU as ops type it: 1-128 characters, no surrounding blanks. Raises ValueError."""
    if not sku or len(sku) > 128 or sku != sku.strip():
        raise ValueError(f"sku must be 1-128 characters without surrounding spaces: {sku!r}")
    return sku


def freeze_sku(session: Session, sku: str, reason: str) -> bool:
    """Freeze a SKU by hand. Returns False when it was frozen already."""
    rows = _lock_rows(session, [check_sku(sku)])
    if rows[sku].frozen:
        return False
    why = f"manual: {reason}" if reason else "manual"
    session.execute(update(SkuHealth).where(SkuHealth.sku == sku)
                    .values(frozen=True, frozen_at=utcnow(), frozen_reason=why,
                            updated_at=utcnow()))
    _alert(session, sku, why, severity="info")
    log.warning("SKU %s frozen by hand", sku)
    return True


@dataclass
class UnfreezeResult:
    was_frozen: bool
    resumed: list[int] = field(default_factory=list)  # back to fraud_checked: reserve them
    still_held: list[int] = field(default_factory=list)  # held for another frozen SKU too


def unfreeze_sku(session: Session, sku: str) -> UnfreezeResult:
    """Unfreeze a SKU: clear its window, close its alert, and resume the orders held for it.

    An order held for several frozen SKUs stays held until the last of them is unfrozen.
    The caller sends the resumed orders to the reservation stage after the commit.
    """
    # The health row first: the reservation stage writes its holds while holding that row, so
    # every hold for this SKU is either committed (and found below) or not written at all (the
    # stage then sees the SKU unfrozen). Only on_hold orders are locked next, which the stage
    # never locks (it claims fraud_checked/backordered ones), so the two cannot deadlock.
    was_frozen = _lock_rows(session, [check_sku(sku)])[sku].frozen
    on_hold = list(session.execute(
        select(OrderRow.id)
        .where(OrderRow.id.in_(select(SkuHold.order_id).where(SkuHold.sku == sku)),
               OrderRow.state == State.ON_HOLD.value)
        .order_by(OrderRow.id).with_for_update(of=OrderRow)
    ).scalars())
    session.execute(update(SkuHealth).where(SkuHealth.sku == sku)
                    .values(frozen=False, frozen_at=None, frozen_reason=None, recent="",
                            updated_at=utcnow()))
    resolve_alert(session, ALERT_KIND, sku)
    session.execute(sku_holds_table.delete().where(SkuHold.sku == sku))
    result = UnfreezeResult(was_frozen)
    if not on_hold:
        return result
    # Other frozen SKUs still holding some of these orders.
    others: dict[int, list[str]] = {}
    for order_id, other in session.execute(
        select(SkuHold.order_id, SkuHold.sku)
        .join(SkuHealth, SkuHealth.sku == SkuHold.sku)
        .where(SkuHold.order_id.in_(on_hold), SkuHealth.frozen.is_(True))
        .order_by(SkuHold.order_id, SkuHold.sku)
    ):
        others.setdefault(order_id, []).append(other)
    resume = [i for i in on_hold if i not in others]
    if others:
        session.execute(update(OrderRow), [
            {"id": i, "hold_reason": hold_reason(skus)} for i, skus in others.items()])
        result.still_held = sorted(others)
    if resume:
        session.execute(update(OrderRow), [{"id": i, "hold_reason": None} for i in resume])
        applied = apply_transitions(session, [
            Move(i, State.ON_HOLD, State.FRAUD_CHECKED, {"reason": f"SKU {sku} unfrozen"})
            for i in resume], stage="inventory")
        result.resumed = [m.order_id for m in applied]
    log.info("SKU %s unfrozen: %d held orders resume, %d still held for other SKUs",
             sku, len(result.resumed), len(result.still_held))
    return result


def hold_reason(frozen_skus: Iterable[str]) -> str:
    """The hold reason of an order held for these frozen SKUs."""
    skus = sorted(set(frozen_skus))
    return f"{HOLD_PREFIX}{'s' if len(skus) > 1 else ''} {', '.join(skus)}: " \
           f"waiting for `orderfleet sku unfreeze`"


def list_skus(session: Session, *, frozen_only: bool = False,
              settings: Settings) -> list[dict[str, Any]]:
    """Per SKU: stock over all warehouses, the failure window, freeze and held orders."""
    stock = {sku: (int(on_hand), int(reserved), int(n)) for sku, on_hand, reserved, n in
             session.execute(select(Stock.sku, func.sum(Stock.on_hand), func.sum(Stock.reserved),
                                    func.count()).group_by(Stock.sku))}
    health = {h.sku: h for h in session.execute(select(SkuHealth)).scalars()}
    held = dict(session.execute(
        select(SkuHold.sku, func.count())
        .join(OrderRow, OrderRow.id == SkuHold.order_id)
        .where(OrderRow.state == State.ON_HOLD.value)
        .group_by(SkuHold.sku)).all())
    out = []
    for sku in sorted(set(stock) | set(health)):
        h = health.get(sku)
        if frozen_only and not (h and h.frozen):
            continue
        on_hand, reserved, warehouses = stock.get(sku, (0, 0, 0))
        window = (h.recent if h else "")[-settings.sku_freeze_window:]
        out.append({
            "sku": sku, "warehouses": warehouses, "on_hand": on_hand, "reserved": reserved,
            "available": on_hand - reserved,
            "window_attempts": len(window), "window_failures": window.count(FAILED),
            "failure_rate": round(window.count(FAILED) / settings.sku_freeze_window, 4),
            "attempts": int(h.attempts) if h else 0, "failures": int(h.failures) if h else 0,
            "frozen": bool(h and h.frozen), "frozen_reason": h.frozen_reason if h else None,
            "frozen_at": h.frozen_at.isoformat() if h and h.frozen_at else None,
            "held_orders": int(held.get(sku, 0)),
        })
    return out
