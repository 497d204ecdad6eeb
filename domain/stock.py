"""Stock levels from an ERP/WMS feed (CSV or JSON): set idempotently, per SKU and warehouse.

A feed gives absolute on-hand units (what is on the shelf, reserved units included), so a
replayed or duplicated feed changes nothing. A level below what live orders have reserved is
refused for that row, with an alert: accepting it would oversell, and which orders lose their
units is a person's decision.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from domain.alerts import raise_alert
from domain.clock import utcnow
from domain.db import UnitOfWork, dialect_insert
from domain.models import Stock, Warehouse

log = logging.getLogger(__name__)

# Rows per upsert statement: a few hundred bound rows keep each statement small.
UPSERT_CHUNK = 500


class StockLevel(BaseModel):
    sku: str = Field(min_length=1, max_length=128)
    warehouse: str = Field(min_length=1, max_length=64)
    on_hand: int = Field(ge=0)
    country: str | None = Field(None, pattern=r"^[A-Z]{2}$")
    # Bin location (aisle-rack-shelf) for pick lists; a feed without it keeps the stored one.
    bin: str | None = Field(None, max_length=32)


class StockFeedError(ValueError):
    pass


@dataclass
class ImportResult:
    rows: int  # levels written
    skus: list[str]  # SKUs whose levels were written
    # Rows refused because live orders hold more units than the feed says are on hand.
    refused: list[dict[str, Any]] = field(default_factory=list)


def parse_stock_feed(text: str, fmt: str | None = None) -> list[StockLevel]:
    """CSV with a header (sku, warehouse, on_hand[, country]) or a JSON array of objects
    (or ``{"stock": [...]}``). Raises StockFeedError naming each bad row and field."""
    stripped = text.lstrip()
    fmt = fmt or ("json" if stripped.startswith(("[", "{")) else "csv")
    records: list[Any]
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StockFeedError(f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
        records = data.get("stock", []) if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise StockFeedError("expected a JSON array of stock levels (or {\"stock\": [...]})")
    else:
        reader = csv.DictReader(io.StringIO(text))
        missing = {"sku", "warehouse", "on_hand"} - set(reader.fieldnames or [])
        if missing:
            raise StockFeedError(f"CSV header lacks column(s): {', '.join(sorted(missing))}")
        records = list(reader)
    levels, errors = [], []
    for n, rec in enumerate(records, start=1):
        try:
            if isinstance(rec, dict):
                rec = {**rec, **{k: None for k in ("country", "bin") if rec.get(k) == ""}}
            levels.append(StockLevel.model_validate(rec))
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) or "(row)" for e in exc.errors())
            errors.append(f"row {n}: invalid {fields}")
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    for n, lv in enumerate(levels, start=1):
        key = (lv.sku, lv.warehouse)
        if key in seen and seen[key][1] != lv.on_hand:
            errors.append(f"row {n}: {lv.sku} at {lv.warehouse} appears again with on_hand "
                          f"{lv.on_hand} (row {seen[key][0]} says {seen[key][1]})")
        seen.setdefault(key, (n, lv.on_hand))
    if errors:
        raise StockFeedError("; ".join(errors[:20]) + (f"; and {len(errors) - 20} more"
                                                       if len(errors) > 20 else ""))
    return levels


def read_stock_file(path: Path) -> list[StockLevel]:
    """Parse a feed file: JSON by its suffix, else sniffed (JSON or CSV)."""
    fmt = "json" if path.suffix.lower() in (".json", ".jsonl") else None
    return parse_stock_feed(path.read_text(encoding="utf-8"), fmt)


def stock_lock_order(session: Session) -> tuple[Any, ...]:
    """ORDER BY for every statement that locks stock rows: one global lock order.

    Byte order (COLLATE "C" on PostgreSQL, SQLite's default), which is also Python's order of
    str, so code that locks in chunks of a Python-sorted list keeps the same order.
    """
    if session.get_bind().dialect.name == "postgresql":
        return (Stock.sku.collate("C"), Stock.warehouse.collate("C"))
    return (Stock.sku, Stock.warehouse)


def set_stock_levels(uow: UnitOfWork, levels: list[StockLevel]) -> ImportResult:
    """Upsert on-hand units; reserved units are untouched (they belong to live orders).

    Existing rows are locked first in the reservation stage's lock order, so an import
    running beside the fleet waits its turn instead of deadlocking. A level below the units
    reserved is refused (reported and alerted), never applied.
    """
    session = uow.session
    now = utcnow()
    known = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    new_wh = {}
    for lv in levels:
        if lv.warehouse not in known and lv.warehouse not in new_wh:
            if not lv.country:
                raise StockFeedError(f"warehouse {lv.warehouse} is new: give its country")
            new_wh[lv.warehouse] = lv.country
    if new_wh:
        session.add_all(Warehouse(code=c, country=k) for c, k in sorted(new_wh.items()))
        session.flush()
    by_key = {(lv.sku, lv.warehouse): lv.on_hand for lv in levels}
    reserved: dict[tuple[str, str], int] = {}
    keys = sorted(by_key)
    for i in range(0, len(keys), UPSERT_CHUNK):
        # Chunks are contiguous in the lock order (byte order), so the locks stay ordered.
        for sku, wh, held in session.execute(
            select(Stock.sku, Stock.warehouse, Stock.reserved)
            .where(tuple_(Stock.sku, Stock.warehouse).in_(keys[i : i + UPSERT_CHUNK]))
            .order_by(*stock_lock_order(session)).with_for_update()
        ):
            reserved[(sku, wh)] = held
    refused = [{"sku": s, "warehouse": w, "on_hand": q, "reserved": reserved[(s, w)]}
               for (s, w), q in sorted(by_key.items()) if q < reserved.get((s, w), 0)]
    for r in refused:
        raise_alert(session, "stock_below_reserved", f"{r['sku']}@{r['warehouse']}",
                    f"stock feed says {r['on_hand']} units of {r['sku']} at {r['warehouse']}, "
                    f"but live orders hold {r['reserved']}: level not applied; cancel or "
                    f"move orders, or correct the feed", severity="critical", detail=r)
    skip = {(r["sku"], r["warehouse"]) for r in refused}
    applied = [(s, w, q) for (s, w), q in sorted(by_key.items()) if (s, w) not in skip]
    bins = {(lv.sku, lv.warehouse): lv.bin for lv in levels if lv.bin}
    rows = [{"sku": s, "warehouse": w, "on_hand": q, "reserved": 0, "updated_at": now,
             "bin": bins.get((s, w))} for s, w, q in applied]
    for i in range(0, len(rows), UPSERT_CHUNK):
        stmt = dialect_insert(session, Stock).values(rows[i : i + UPSERT_CHUNK])
        stmt = stmt.on_conflict_do_update(
            index_elements=["sku", "warehouse"],
            set_={"on_hand": stmt.excluded.on_hand, "updated_at": stmt.excluded.updated_at,
                  # A feed row without a bin keeps the one on file.
                  "bin": func.coalesce(stmt.excluded.bin, Stock.bin)},
        )
        session.execute(stmt)
    if refused:
        log.warning("stock feed: %d levels refused (below units reserved)", len(refused))
    return ImportResult(rows=len(rows), skus=sorted({s for s, _, _ in applied}), refused=refused)
