"""Offline evaluation of the routing strategies on a generated history with a hidden truth.

The world: two warehouses (US, DE), destinations near and far, parcels of every weight and
value, lanes with their delivery promises, and the sandbox carrier's real quotes (price and
the carrier's own delivery estimate). What really happens to a parcel is drawn from a hidden
model that neither strategy sees: some estimates are pessimistic (the post crosses a border
inside a region in about five days although it quotes the international ten), some are
optimistic (heavy parcels sit in customs; the post loses valuable parcels abroad more often).

History: past shipments routed by the rules with some exploration (30% of parcels get a
random quoted service, as a store trialling services would), outcomes drawn from the truth.
The learned strategy trains on that history only. Then fresh orders are routed by both, and
each choice's outcome is drawn from the truth with the same random numbers for both
(common random numbers: a paired comparison). Reported with 95% intervals.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from config.settings import Settings
from domain.carriers import Rate
from domain.route_learning import (
    LEARNED,
    RULES,
    LearnedStrategy,
    Outcome,
    ParcelFeatures,
    RoutingStrategy,
    RuleStrategy,
    mean_ci,
    train,
    wilson_ci,
)
from domain.zones import INTERNATIONAL, REGIONAL, zone_of
from sandbox.carrier.tariffs import CARRIERS, rates_for

WAREHOUSES = {"US-EAST": "US", "EU-DE": "DE"}
# Destination mix of a cross-border store: mostly home markets, a tail far away.
DESTINATIONS = {"US": 30, "CA": 8, "MX": 4, "DE": 20, "FR": 10, "NL": 6, "GB": 7, "AU": 6,
                "JP": 5, "BR": 4}
LANES = {"standard": 70, "express": 12, "vip": 6, "custom": 12}
EXPLORATION = 0.3


@dataclass(frozen=True)
class Parcel:
    order_id: int
    from_country: str
    to_country: str
    features: ParcelFeatures


def _parcel(rng: random.Random, order_id: int, promises: dict[str, int]) -> Parcel:
    to = rng.choices(list(DESTINATIONS), weights=list(DESTINATIONS.values()))[0]
    # The nearest warehouse ships (domestic, then regional, then the US).
    home = next((c for c in WAREHOUSES.values() if c == to), None) or next(
        (c for c in WAREHOUSES.values() if zone_of(c, to) == REGIONAL), "US")
    lane = rng.choices(list(LANES), weights=list(LANES.values()))[0]
    weight = int(min(max(rng.lognormvariate(math.log(900), 0.9), 80), 25_000))
    value = round(min(rng.lognormvariate(math.log(70), 0.9), 3000), 2)
    return Parcel(order_id, home, to, ParcelFeatures(zone_of(home, to), lane, weight, value,
                                                      promises.get(lane, promises["standard"])))


def quotes(p: Parcel) -> list[Rate]:
    return [Rate(r["carrier"], r["service"], Decimal(r["rate"]), r["currency"],
                 r["est_delivery_days"])
            for r in rates_for(CARRIERS, p.from_country, p.to_country, p.features.weight_g)]


def true_outcome(p: Parcel, rate: Rate, u: tuple[float, float, float]) -> tuple[float, bool]:
    """(transit days, exception) for this parcel on this service: the hidden truth.

    ``u`` are three uniform numbers fixed per (parcel, service), shared by every strategy.
    """
    f = p.features
    days = float(rate.est_delivery_days)
    post = rate.carrier == "sbx-post"
    if post and f.zone == REGIONAL:
        days -= 5 if rate.service == "ground" else 3  # a regional border is no ocean
    if f.zone == INTERNATIONAL and f.weight_g > 2000:
        days += 3 if post else 2  # heavy parcels are inspected in customs
    if rate.carrier == "sbx-air" and rate.service == "express" and f.zone == INTERNATIONAL:
        days += 1 if f.weight_g > 5000 else 0
    # Day-to-day noise: the post is less regular than the air courier.
    noise = -math.log(max(1 - u[0], 1e-12)) * (0.9 if post else 0.4)
    days = max(days + noise - (0.5 if post else 0.2), 0.5)
    p_exc = 0.01
    if post and f.zone == INTERNATIONAL:
        p_exc += 0.07 if f.value_usd > 150 else 0.02
    if rate.carrier == "sbx-air":
        p_exc = 0.005
    return days, u[1] < p_exc


def _uniforms(seed: int, order_id: int, rate: Rate) -> tuple[float, float, float]:
    r = random.Random(f"{seed}:{order_id}:{rate.carrier}:{rate.service}")
    return r.random(), r.random(), r.random()


def generate_history(n: int, seed: int, promises: dict[str, int]) -> list[Outcome]:
    rng = random.Random(seed)
    rules = RuleStrategy()
    out = []
    for i in range(n):
        p = _parcel(rng, i, promises)
        rates = quotes(p)
        if not rates:
            continue
        if rng.random() < EXPLORATION:
            rate = rng.choice(rates)
        else:
            choice = rules.choose(p.features, rates)
            assert choice is not None
            rate = next(r for r in rates if (r.carrier, r.service) == (choice.carrier,
                                                                        choice.service))
        days, exc = true_outcome(p, rate, _uniforms(seed, i, rate))
        out.append(Outcome(p.features, rate, on_time=days <= p.features.promise_days,
                           exception=exc, transit_days=days))
    return out


def _interval(i: Any) -> dict[str, float]:
    return {"value": round(i.value, 4), "low": round(i.low, 4), "high": round(i.high, 4)}


def evaluate(*, history: int, orders: int, seed: int, settings: Settings) -> dict[str, Any]:
    """Train on a generated history, route fresh orders with both strategies, compare."""
    promises = dict(settings.delivery_promise_days)
    past = generate_history(history, seed, promises)
    models = train(past)
    strategies: dict[str, RoutingStrategy] = {
        RULES: RuleStrategy(),
        LEARNED: LearnedStrategy(models, settings.routing_late_penalty_usd,
                                 settings.routing_exception_penalty_usd)}
    rng = random.Random(seed + 1)
    fresh = [_parcel(rng, 10_000_000 + i, promises) for i in range(orders)]
    per: dict[str, dict[str, list[float]]] = {a: {"cost": [], "on_time": [], "exc": [],
                                                   "total": []} for a in strategies}
    items = [(p, quotes(p)) for p in fresh]
    items = [(p, rates) for p, rates in items if rates]
    for arm, strategy in strategies.items():
        choices = strategy.choose_many([(p.features, rates) for p, rates in items])
        for (p, rates), choice in zip(items, choices, strict=True):
            assert choice is not None
            rate = next(r for r in rates if (r.carrier, r.service) == (choice.carrier,
                                                                        choice.service))
            days, exc = true_outcome(p, rate, _uniforms(seed + 1, p.order_id, rate))
            on_time = days <= p.features.promise_days
            cost = float(rate.rate)
            per[arm]["cost"].append(cost)
            per[arm]["on_time"].append(float(on_time))
            per[arm]["exc"].append(float(exc))
            per[arm]["total"].append(cost + settings.routing_late_penalty_usd * (not on_time)
                                     + settings.routing_exception_penalty_usd * exc)
    result: dict[str, Any] = {"history": len(past), "orders": len(per[RULES]["cost"]),
                              "seed": seed, "model_metrics": models.metrics,
                              "late_penalty_usd": settings.routing_late_penalty_usd,
                              "exception_penalty_usd": settings.routing_exception_penalty_usd,
                              "strategies": {}}
    for arm, m in per.items():
        n = len(m["cost"])
        result["strategies"][arm] = {
            "cost_per_order": _interval(mean_ci(m["cost"])),
            "on_time_rate": _interval(wilson_ci(int(sum(m["on_time"])), n)),
            "exception_rate": _interval(wilson_ci(int(sum(m["exc"])), n)),
            "total_cost_per_order": _interval(mean_ci(m["total"])),
        }
    # Paired differences (learned - rules) on the same orders and the same random numbers.
    for key, name in (("cost", "cost_per_order"), ("on_time", "on_time_rate"),
                      ("total", "total_cost_per_order")):
        diff = (np.array(per[LEARNED][key]) - np.array(per[RULES][key])).tolist()
        result.setdefault("learned_minus_rules", {})[name] = _interval(mean_ci(diff))
    return result


def print_evaluation(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(i: dict[str, float]) -> str:
        return f"{i['value']:.3f} [{i['low']:.3f}, {i['high']:.3f}]"

    table = Table("strategy", "label cost/order USD", "on-time rate", "exception rate",
                  "cost incl. penalties", title=(
                      f"routing on {result['orders']} new orders after {result['history']} "
                      f"past shipments (seed {result['seed']}, 95% CI)"))
    for arm, m in result["strategies"].items():
        table.add_row(arm, fmt(m["cost_per_order"]), fmt(m["on_time_rate"]),
                      fmt(m["exception_rate"]), fmt(m["total_cost_per_order"]))
    d = result["learned_minus_rules"]
    table.add_row("learned - rules", fmt(d["cost_per_order"]), fmt(d["on_time_rate"]), "",
                  fmt(d["total_cost_per_order"]))
    Console().print(table)
