"""Stock levels from an ERP/WMS feed (CSV or JSON): set idempotently, per SKU and warehouse."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from domain.clock import utcnow
from domain.db import UnitOfWork
from domain.models import Stock, Warehouse


class StockLevel(BaseModel):
    sku: str = Field(min_length=1, max_length=128)
    warehouse: str = Field(min_length=1, max_length=64)
    on_hand: int = Field(ge=0)
    country: str | None = Field(None, pattern=r"^[A-Z]{2}$")


class StockFeedError(ValueError):
    pass


@dataclass
class ImportResult:
    rows: int
    skus: list[str]


def parse_stock_feed(text: str, fmt: str | None = None) -> list[StockLevel]:
    """CSV with a header (sku, warehouse, on_hand[, country]) or a JSON array of objects."""
    stripped = text.lstrip()
    fmt = fmt or ("json" if stripped.startswith(("[", "{")) else "csv")
    records: list[Any]
    if fmt == "json":
        data = json.loads(text)
        records = data.get("stock", []) if isinstance(data, dict) else data
    else:
        records = list(csv.DictReader(io.StringIO(text)))
    levels, errors = [], []
    for n, rec in enumerate(records, start=1):
        try:
            if isinstance(rec, dict) and rec.get("country") == "":
                rec = {**rec, "country": None}
            levels.append(StockLevel.model_validate(rec))
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            errors.append(f"row {n}: invalid {fields}")
    if errors:
        raise StockFeedError("; ".join(errors[:20]))
    return levels


def read_stock_file(path: Path) -> list[StockLevel]:
    fmt = "json" if path.suffix.lower() in (".json", ".jsonl") else None
    return parse_stock_feed(path.read_text(encoding="utf-8"), fmt)


def set_stock_levels(uow: UnitOfWork, levels: list[StockLevel]) -> ImportResult:
    """Upsert on-hand units; reserved units are untouched (they belong to live orders).

    Setting absolute levels makes a replayed feed harmless. A level below what is reserved is
    refused by the table's CHECK rather than silently overselling.
    """
    session = uow.session
    now = utcnow()
    known = dict(session.execute(Warehouse.__table__.select()).all())
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
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    rows = [{"sku": s, "warehouse": w, "on_hand": q, "reserved": 0, "updated_at": now}
            for (s, w), q in sorted(by_key.items())]
    for i in range(0, len(rows), 500):
        stmt = insert(Stock).values(rows[i : i + 500])
        stmt = stmt.on_conflict_do_update(
            index_elements=["sku", "warehouse"],
            set_={"on_hand": stmt.excluded.on_hand, "updated_at": stmt.excluded.updated_at},
        )
        session.execute(stmt)
    return ImportResult(rows=len(rows), skus=sorted({s for s, _ in by_key}))
