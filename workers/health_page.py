"""The order-health page, mounted under ``/ops`` by ``orderfleet serve``.

    GET /ops/health        an HTML page: inventory, payment/review and logistics panels with
                           plots (backlog by stage, SLA attainment by day, status lag by
                           state, exceptions by stage and hour)
    GET /ops/health.json   the same figures as JSON

Both need HTTP basic auth with ``ORDERFLEET_OPS_BASIC_AUTH`` (the Flower credentials): the
page names SKUs and stores' volumes; it never shows customer data. The plots are inline SVG
drawn here, so the page needs no script, no CDN and no internet.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.lifecycle import PROCESSING, State
from domain.models import Shipment, SkuHealth
from domain.observability import DAY, daily_sla, exception_heatmap, snapshot
from workers.ops_auth import basic_auth_matches

# Orders the fleet still has to move or a person has to look at, in pipeline order.
BACKLOG_STATES = (State.RECEIVED, State.ON_HOLD, State.FRAUD_CHECKED, State.BACKORDERED,
                  State.RESERVED, State.IN_WAVE, State.LABEL_FAILED)


def health_view(settings: Settings, now: datetime) -> dict[str, Any]:
    """Every figure the page shows (also served as JSON)."""
    with unit_of_work(settings) as uow:
        s = uow.session
        snap = snapshot(s, settings, now)
        days = daily_sla(s, settings, now, 7)
        heat = exception_heatmap(s, now - 7 * DAY, now)
        shipments = dict(s.execute(select(Shipment.status, func.count())
                                   .group_by(Shipment.status)).all())
        frozen = s.execute(select(func.count()).select_from(SkuHealth)
                           .where(SkuHealth.frozen.is_(True))).scalar_one()
    breakers: dict[str, str] = {}
    try:
        from domain.carriers.shared import shared_breaker

        b = shared_breaker(settings)
        breakers = {name: b.status(name).state for name in b.names()}
    except Exception:  # Redis unreachable: the page still shows the database's view
        breakers = {}
    return {
        "at": now.isoformat(),
        "orders_total": snap.orders_total,
        "backlog_by_state": {st.value: snap.orders_by_state.get(st.value, 0)
                             for st in BACKLOG_STATES},
        "orders_by_state": snap.orders_by_state,
        "status_lag_s": round(snap.status_lag_s, 1),
        "status_lag_by_state": {st.value: round(snap.lag_by_state.get(st.value, (0, 0.0))[1], 1)
                                for st in BACKLOG_STATES if st in PROCESSING},
        "status_lag_alert_s": settings.status_lag_alert_s,
        "status_lagging": snap.status_lagging,
        "backlog_oldest_s": round(snap.backlog_oldest_s, 1),
        "sla_24h": snap.sla_24h.ratio,
        # Each 24-hour period ending at this time of day, named by the day it ends.
        "sla_by_day": [{"day": (start + DAY).date().isoformat(), "ratio": sla.ratio,
                        "on_time": sla.on_time, "late": sla.late} for start, sla in days],
        "sla_target": settings.sla_attainment_alert,
        "inventory": {
            "skus_failing": {sku: {"failed": f, "attempts": a}
                             for sku, (f, a) in sorted(snap.sku_failures.items(),
                                                       key=lambda kv: -kv[1][0] / kv[1][1])},
            "frozen_skus": frozen,
            "backordered": snap.orders_by_state.get(State.BACKORDERED.value, 0),
            "reservation_failure_ratio": (snap.reservation_failures / snap.reservation_attempts
                                          if snap.reservation_attempts else None),
        },
        "payment": {
            "on_hold": snap.on_hold,
            "on_hold_for_sku": snap.on_hold_for_sku,
            "on_hold_oldest_s": round(snap.on_hold_oldest_s, 1),
            "rejected_by_fraud": snap.orders_by_state.get(State.REJECTED.value, 0),
            "refused_at_intake": snap.intake_rejections,
        },
        "logistics": {
            "shipments": shipments,
            "tracking_silent": snap.tracking_silent,
            "label_failed": snap.orders_by_state.get(State.LABEL_FAILED.value, 0),
            "breakers": breakers,
            "cost_share_7d": snap.cost_7d.share,
        },
        "exceptions_heatmap": heat,
        "exception_rate": snap.exceptions.rate,
        "exception_rate_previous": snap.exceptions.previous_rate,
    }


# --- plots (inline SVG) ----------------------------------------------------------------------
def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def bar_chart(values: dict[str, float], *, unit: str = "", line: float | None = None,
              line_label: str = "", width: int = 460, height: int = 220,
              fmt: str = "{:.0f}") -> str:
    """Vertical bars with their values; an optional threshold line."""
    n = max(len(values), 1)
    top = max([*values.values(), line or 0, 1e-9])
    plot_h, base_y, left = height - 60, height - 40, 30
    slot = (width - left - 10) / n
    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img">',
             f'<line x1="{left}" y1="{base_y}" x2="{width - 5}" y2="{base_y}" stroke="#888"/>']
    bar = min(slot * 0.7, 60.0)  # one day's bar does not fill the whole panel
    for i, (label, v) in enumerate(values.items()):
        h = plot_h * (v / top)
        x = left + i * slot + (slot - bar) / 2
        parts.append(f'<rect x="{x:.1f}" y="{base_y - h:.1f}" width="{bar:.1f}" '
                     f'height="{h:.1f}" fill="#3b7dd8"><title>{_esc(label)}: '
                     f'{_esc(fmt.format(v))}{unit}</title></rect>')
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{base_y - h - 4:.1f}" '
                     f'font-size="11" text-anchor="middle">{_esc(fmt.format(v))}</text>')
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{base_y + 14}" font-size="10" '
                     f'text-anchor="middle">{_esc(label)}</text>')
    if line is not None:
        ly = base_y - plot_h * (line / top)
        parts.append(f'<line x1="{left}" y1="{ly:.1f}" x2="{width - 5}" y2="{ly:.1f}" '
                     f'stroke="#d33" stroke-dasharray="4 3"/>'
                     f'<text x="{width - 5}" y="{ly - 3:.1f}" font-size="10" fill="#d33" '
                     f'text-anchor="end">{_esc(line_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap(grid: dict[str, list[int]], *, width: int = 940) -> str:
    """Stages down, hours of the day (UTC) across; darker is more exceptions."""
    rows = grid or {"(none)": [0] * 24}
    cell_w, cell_h, left, top = (width - 110) / 24, 22, 100, 20
    height = top + cell_h * len(rows) + 10
    peak = max([max(v) for v in rows.values()] + [1])
    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img">']
    for h in range(24):
        parts.append(f'<text x="{left + h * cell_w + cell_w / 2:.1f}" y="14" font-size="10" '
                     f'text-anchor="middle">{h:02d}</text>')
    for r, (stage, counts) in enumerate(rows.items()):
        y = top + r * cell_h
        parts.append(f'<text x="{left - 6}" y="{y + 15}" font-size="11" '
                     f'text-anchor="end">{_esc(stage)}</text>')
        for h, n in enumerate(counts):
            shade = 0.08 + 0.92 * (n / peak) if n else 0.0
            parts.append(f'<rect x="{left + h * cell_w:.1f}" y="{y}" width="{cell_w - 1:.1f}" '
                         f'height="{cell_h - 2}" fill="rgba(200,40,40,{shade:.2f})" '
                         f'stroke="#eee"><title>{_esc(stage)} {h:02d}h: {n}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _dur(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def render_page(view: dict[str, Any]) -> str:
    inv, pay, log = view["inventory"], view["payment"], view["logistics"]
    tiles = [("orders", view["orders_total"]), ("SLA attainment (24 h)", _pct(view["sla_24h"])),
             ("longest status lag", _dur(view["status_lag_s"])),
             ("oldest order in pipeline", _dur(view["backlog_oldest_s"])),
             ("on hold", pay["on_hold"]), ("tracking silent 24 h", log["tracking_silent"]),
             ("cost / GMV (7 d)", _pct(log["cost_share_7d"]))]
    # Days without an order due have no ratio: no bar rather than a misleading 0%.
    sla_days = {d["day"][5:]: d["ratio"] * 100 for d in view["sla_by_day"]
                if d["ratio"] is not None}
    lag_min = {k: v / 60 for k, v in view["status_lag_by_state"].items()}
    failing = "".join(f"<tr><td>{_esc(sku)}</td><td>{v['failed']}/{v['attempts']}</td></tr>"
                      for sku, v in list(inv["skus_failing"].items())[:10]) or \
        '<tr><td colspan="2">no SKU with failed reservations</td></tr>'
    ships = "".join(f"<tr><td>{_esc(k)}</td><td>{v}</td></tr>"
                    for k, v in sorted(log["shipments"].items())) or \
        '<tr><td colspan="2">no shipments yet</td></tr>'
    breakers = ", ".join(f"{_esc(k)}: {_esc(v)}" for k, v in log["breakers"].items()) or "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>orderfleet: order health</title>
<meta http-equiv="refresh" content="30">
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; background: #fafafa; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 15px; margin: 4px 0 8px; }}
.tiles {{ display: flex; gap: 10px; flex-wrap: wrap; }}
.tile {{ background: #fff; border: 1px solid #ddd; padding: 8px 12px; min-width: 120px; }}
.tile b {{ display: block; font-size: 20px; }}
.grid {{ display: grid; grid-template-columns: repeat(2, 480px); gap: 12px; margin-top: 12px; }}
.panel {{ background: #fff; border: 1px solid #ddd; padding: 10px; }}
.wide {{ grid-column: 1 / span 2; }}
table {{ border-collapse: collapse; font-size: 12px; }} td {{ padding: 2px 8px; }}
</style></head><body>
<h1>orderfleet: order health <small>{_esc(view["at"][:19])} UTC</small></h1>
<div class="tiles">{"".join(f'<div class="tile">{_esc(k)}<b>{_esc(v)}</b></div>'
                            for k, v in tiles)}</div>
<div class="grid">
<section class="panel" id="backlog"><h2>Backlog by stage (orders)</h2>
{bar_chart({k.replace("_", " "): float(v) for k, v in view["backlog_by_state"].items()})}</section>
<section class="panel" id="sla"><h2>SLA attainment by day (%)</h2>
{bar_chart(sla_days, unit="%", line=view["sla_target"] * 100,
           line_label=f"target {view['sla_target']:.0%}")}</section>
<section class="panel" id="lag"><h2>Status lag by stage (minutes since the oldest moved)</h2>
{bar_chart({k.replace("_", " "): v for k, v in lag_min.items()}, unit=" min",
           line=view["status_lag_alert_s"] / 60, line_label="alert", fmt="{:.1f}")}</section>
<section class="panel" id="inventory"><h2>Inventory</h2>
<p>backordered orders: {inv["backordered"]}; frozen SKUs: {inv["frozen_skus"]};
reservation failures: {_pct(inv["reservation_failure_ratio"])}</p>
<table><tr><th>SKU</th><th>failed / attempts</th></tr>{failing}</table></section>
<section class="panel" id="payment"><h2>Payment and review</h2>
<p>on hold for a person: {pay["on_hold"]} ({pay["on_hold"] - pay["on_hold_for_sku"]} for
fraud review, {pay["on_hold_for_sku"]} for a frozen SKU; longest
{_dur(pay["on_hold_oldest_s"])});
rejected by the fraud check: {pay["rejected_by_fraud"]};
refused at the door (kept with reasons): {pay["refused_at_intake"]}</p></section>
<section class="panel" id="logistics"><h2>Logistics</h2>
<p>label failed: {log["label_failed"]}; tracking silent 24 h: {log["tracking_silent"]};
carrier breakers: {breakers}</p>
<table><tr><th>shipment status</th><th>count</th></tr>{ships}</table></section>
<section class="panel wide" id="exceptions"><h2>Exceptions by stage and hour (UTC, last 7 days;
per order: {_pct(view["exception_rate"])} today, {_pct(view["exception_rate_previous"])}
the day before)</h2>
{heatmap(view["exceptions_heatmap"])}</section>
</div></body></html>"""


# --- routes ----------------------------------------------------------------------------------
def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


def _refuse() -> Response:
    return Response("ops credentials required", status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="orderfleet ops"'})


async def health_page(request: Request) -> Response:
    settings = _settings(request)
    if not basic_auth_matches(request.headers.get("authorization"), settings):
        return _refuse()
    view = await run_in_threadpool(health_view, settings, utcnow())
    return HTMLResponse(render_page(view))


async def health_json(request: Request) -> Response:
    settings = _settings(request)
    if not basic_auth_matches(request.headers.get("authorization"), settings):
        return _refuse()
    return JSONResponse(await run_in_threadpool(health_view, settings, utcnow()))


routes: list[BaseRoute] = [
    Route("/health", health_page, methods=["GET"]),
    Route("/health.json", health_json, methods=["GET"]),
]
