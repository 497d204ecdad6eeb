"""A pick wave's pick list: what to take from which bin, walked in bin order.

One row per SKU (the wave's orders' quantities summed), sorted by bin location so a picker
walks the aisles once; SKUs without a bin on file come last. Exported as CSV (for a WMS or a
spreadsheet) and as a printable PDF (fpdf2).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass

from fpdf import FPDF
from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.models import OrderLine, OrderRow, Stock, Wave

NO_BIN = ""
CSV_HEADER = ("bin", "sku", "title", "quantity", "orders")


@dataclass(frozen=True)
class PickRow:
    bin: str
    sku: str
    title: str
    quantity: int
    orders: tuple[str, ...]  # the store's order references, for packing


class NoSuchWave(LookupError):
    pass


def bin_sort_key(location: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """Natural order of bins (A-2-10 after A-2-9); an empty bin last."""
    parts: list[tuple[int, int | str]] = []
    for piece in location.replace("_", "-").replace(".", "-").split("-"):
        parts.append((0, int(piece)) if piece.isdigit() else (1, piece.upper()))
    return (1 if not location else 0, tuple(parts))


def pick_list(session: Session, wave_id: int) -> tuple[Wave, list[PickRow]]:
    """The wave and its pick rows in walking order."""
    wave = session.get(Wave, wave_id)
    if wave is None:
        raise NoSuchWave(f"no wave {wave_id}")
    rows = session.execute(
        select(OrderLine.sku, OrderLine.quantity, OrderRow.store, OrderRow.source_order_id,
               OrderRow.payload["lines"], OrderLine.line_no, Stock.bin)
        .join(OrderRow, OrderRow.id == OrderLine.order_id)
        .outerjoin(Stock, (Stock.sku == OrderLine.sku) & (Stock.warehouse == wave.warehouse))
        .where(OrderRow.wave_id == wave_id)
        .order_by(OrderRow.id, OrderLine.line_no)
    ).all()
    qty: dict[str, int] = defaultdict(int)
    refs: dict[str, list[str]] = defaultdict(list)
    titles: dict[str, str] = {}
    bins: dict[str, str] = {}
    for sku, quantity, store, source_order_id, lines, line_no, location in rows:
        qty[sku] += quantity
        ref = f"{store}/{source_order_id}"
        if ref not in refs[sku]:
            refs[sku].append(ref)
        if sku not in titles:
            line = lines[line_no - 1] if isinstance(lines, list) and 0 < line_no <= len(
                lines) else {}
            titles[sku] = str(line.get("title", "")) if isinstance(line, dict) else ""
        bins[sku] = location or NO_BIN
    out = [PickRow(bins[s], s, titles[s], qty[s], tuple(refs[s])) for s in qty]
    out.sort(key=lambda r: (bin_sort_key(r.bin), r.sku))
    return wave, out


def to_csv(rows: list[PickRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_HEADER)
    for r in rows:
        writer.writerow((r.bin, r.sku, r.title, r.quantity, " ".join(r.orders)))
    return buf.getvalue()


def _latin1(text: str) -> str:
    # The PDF core fonts are Latin-1: anything else is shown as '?' rather than failing.
    return text.encode("latin-1", "replace").decode("latin-1")


def to_pdf(wave: Wave, rows: list[PickRow]) -> bytes:
    """A printable A4 pick list with the wave's header and one line per bin."""
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, _latin1(f"Pick list - wave {wave.id}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10)
    pdf.cell(0, 6, _latin1(
        f"Warehouse {wave.warehouse} | {wave.carrier} {wave.service} | zone {wave.zone} | "
        f"lane {wave.lane} | {wave.size} orders | {sum(r.quantity for r in rows)} units"),
        new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    widths = (28, 42, 80, 20)
    pdf.set_font("Helvetica", "B", 10)
    for w, head in zip(widths, ("Bin", "SKU", "Title", "Qty"), strict=True):
        pdf.cell(w, 7, head, border=1)
    pdf.ln()
    pdf.set_font("Helvetica", "", 10)
    for r in rows:
        cells = (r.bin or "-", r.sku, r.title[:48], str(r.quantity))
        for w, text in zip(widths, cells, strict=True):
            pdf.cell(w, 7, _latin1(text), border=1)
        pdf.ln()
    return bytes(pdf.output())
