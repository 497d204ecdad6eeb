"""Routing strategies for the carrier service: rules, and a model learned from outcomes.

Both strategies see the same things: the carrier's quotes for the parcel (price and the
carrier's own delivery estimate) and the order's features (lane and its promise, zone,
weight, value). The rule-based one trusts the estimates: the cheapest service whose estimate
meets the promise. The learned one is trained on recorded outcomes (did the parcel arrive in
time, was there an exception) with scikit-learn, and picks the service with the lowest
expected cost: price + late penalty x P(late) + exception penalty x P(exception).

Orders are split between them by a hash of the order id (A/B), so the routing report can
compare like with like; an arm without a model yet falls back to the rules.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import joblib
import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from domain.carriers import Rate
from domain.clock import utcnow
from domain.models import OrderRow, RoutingModel, Shipment, ShipmentStatus

RULES, LEARNED = "rules", "learned"
ARMS: tuple[str, ...] = (RULES, LEARNED)
CATEGORICAL = ("carrier", "service", "zone", "lane")
NUMERIC = ("weight_g", "value_usd", "est_days", "promise_days", "rate")


@dataclass(frozen=True)
class ParcelFeatures:
    """What routing knows of a parcel before choosing (no personal data)."""

    zone: str
    lane: str
    weight_g: int
    value_usd: float
    promise_days: int


@dataclass(frozen=True)
class RouteChoice:
    carrier: str
    service: str
    rate: Decimal | None
    est_delivery_days: int | None
    promise_days: int
    meets_promise: bool
    arm: str = RULES
    expected_cost: float | None = None  # the learned strategy's estimate, for the record


class RoutingStrategy(Protocol):
    """Chooses a carrier service among the quoted ones (the plug-in point)."""

    name: str

    def choose(self, parcel: ParcelFeatures, rates: Sequence[Rate]) -> RouteChoice | None: ...

    def choose_many(self, items: Sequence[tuple[ParcelFeatures, Sequence[Rate]]]
                    ) -> list[RouteChoice | None]: ...


def _pick(rates: Sequence[Rate], parcel: ParcelFeatures) -> tuple[Rate, bool] | None:
    meeting = [r for r in rates if r.est_delivery_days <= parcel.promise_days]
    if meeting:
        return min(meeting, key=lambda r: (r.rate, r.est_delivery_days, r.carrier, r.service)), True
    if not rates:
        return None
    return min(rates, key=lambda r: (r.est_delivery_days, r.rate, r.carrier, r.service)), False


class RuleStrategy:
    """The cheapest service whose estimate meets the promise; else the fastest."""

    name = RULES

    def choose(self, parcel: ParcelFeatures, rates: Sequence[Rate]) -> RouteChoice | None:
        picked = _pick(rates, parcel)
        if picked is None:
            return None
        best, meets = picked
        return RouteChoice(best.carrier, best.service, best.rate, best.est_delivery_days,
                           parcel.promise_days, meets, RULES)

    def choose_many(self, items: Sequence[tuple[ParcelFeatures, Sequence[Rate]]]
                    ) -> list[RouteChoice | None]:
        return [self.choose(parcel, rates) for parcel, rates in items]


def _row(parcel: ParcelFeatures, rate: Rate) -> dict[str, Any]:
    return {"carrier": rate.carrier, "service": rate.service, "zone": parcel.zone,
            "lane": parcel.lane, "weight_g": float(parcel.weight_g),
            "value_usd": float(parcel.value_usd), "est_days": float(rate.est_delivery_days),
            "promise_days": float(parcel.promise_days), "rate": float(rate.rate)}


def _matrix(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[r[c] for c in CATEGORICAL] + [r[c] for c in NUMERIC] for r in rows],
                    dtype=object)


def _classifier() -> Pipeline:
    n_cat = len(CATEGORICAL)
    encode = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
          list(range(n_cat))),
         ("num", "passthrough", list(range(n_cat, n_cat + len(NUMERIC))))])
    return Pipeline([("encode", encode),
                     ("model", HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1,
                                                              random_state=0))])


class _Constant:
    """A 'model' for a target that never varied in training (all on time, no exception)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile([1 - self.p, self.p], (len(x), 1))


@dataclass(frozen=True)
class Outcome:
    """One shipped parcel: the features it was routed with and what happened."""

    parcel: ParcelFeatures
    rate: Rate
    on_time: bool
    exception: bool
    arm: str = RULES
    transit_days: float | None = None


@dataclass
class RoutingModels:
    """P(late) and P(exception) per (parcel, quoted service)."""

    late: Any
    exception: Any
    rows: int
    trained_at: datetime = field(default_factory=utcnow)
    metrics: dict[str, Any] = field(default_factory=dict)

    def p_late(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.late.predict_proba(x))[:, 1]

    def p_exception(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.exception.predict_proba(x))[:, 1]

    def dumps(self) -> bytes:
        buf = io.BytesIO()
        joblib.dump({"late": self.late, "exception": self.exception}, buf)
        return buf.getvalue()

    @classmethod
    def loads(cls, blob: bytes, rows: int, trained_at: datetime) -> RoutingModels:
        data = joblib.load(io.BytesIO(blob))
        return cls(data["late"], data["exception"], rows, trained_at)


def _fit(x: np.ndarray, y: np.ndarray) -> Any:
    if len(set(y.tolist())) < 2:
        return _Constant(float(y[0]) if len(y) else 0.0)
    return _classifier().fit(x, y)


def train(outcomes: Sequence[Outcome]) -> RoutingModels:
    """Fit P(late) and P(exception) on recorded outcomes; metrics on a held-out fifth."""
    if not outcomes:
        raise ValueError("no outcomes to train on")
    x = _matrix([_row(o.parcel, o.rate) for o in outcomes])
    late = np.array([0 if o.on_time else 1 for o in outcomes])
    exc = np.array([1 if o.exception else 0 for o in outcomes])
    # Held-out check (every fifth row): how well P(late) ranks, reported with the model.
    test = np.arange(len(outcomes)) % 5 == 0
    metrics: dict[str, Any] = {"rows": len(outcomes), "late_rate": float(late.mean()),
                               "exception_rate": float(exc.mean())}
    if test.sum() and (~test).sum() and len(set(late[~test].tolist())) == 2:
        held = _fit(x[~test], late[~test])
        p = np.asarray(held.predict_proba(x[test]))[:, 1]
        metrics["held_out_brier_late"] = float(np.mean((p - late[test]) ** 2))
    return RoutingModels(_fit(x, late), _fit(x, exc), len(outcomes), metrics=metrics)


class LearnedStrategy:
    """Lowest expected cost: price + late penalty x P(late) + exception penalty x P(exc)."""

    name = LEARNED

    def __init__(self, models: RoutingModels, late_penalty: float,
                 exception_penalty: float) -> None:
        self.models = models
        self.late_penalty = late_penalty
        self.exception_penalty = exception_penalty

    def expected_costs(self, items: Sequence[tuple[ParcelFeatures, Sequence[Rate]]]
                       ) -> list[list[float]]:
        """Expected cost of each quoted service of each parcel (one model call for all)."""
        flat = [_row(parcel, r) for parcel, rates in items for r in rates]
        if not flat:
            return [[] for _ in items]
        x = _matrix(flat)
        p_late, p_exc = self.models.p_late(x), self.models.p_exception(x)
        costs = [float(row["rate"]) + self.late_penalty * pl + self.exception_penalty * pe
                 for row, pl, pe in zip(flat, p_late, p_exc, strict=True)]
        out, i = [], 0
        for _, rates in items:
            out.append(costs[i:i + len(rates)])
            i += len(rates)
        return out

    def choose_many(self, items: Sequence[tuple[ParcelFeatures, Sequence[Rate]]]
                    ) -> list[RouteChoice | None]:
        """Route many parcels at once (a wave): the model is asked once."""
        out: list[RouteChoice | None] = []
        for (parcel, rates), costs in zip(items, self.expected_costs(items), strict=True):
            if not rates:
                out.append(None)
                continue
            i = min(range(len(rates)),
                    key=lambda k: (costs[k], rates[k].carrier, rates[k].service))
            best = rates[i]
            out.append(RouteChoice(best.carrier, best.service, best.rate,
                                   best.est_delivery_days, parcel.promise_days,
                                   best.est_delivery_days <= parcel.promise_days, LEARNED,
                                   round(costs[i], 4)))
        return out

    def choose(self, parcel: ParcelFeatures, rates: Sequence[Rate]) -> RouteChoice | None:
        return self.choose_many([(parcel, rates)])[0]


def arm_for(order_id: int, learned_share: float) -> str:
    """The A/B arm of an order: a stable hash of its id, so a re-run routes it the same."""
    digest = hashlib.sha256(f"routing:{order_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000
    return LEARNED if bucket < round(learned_share * 10_000) else RULES


# --------------------------------------------------------------------------------------------
# Recorded outcomes, stored models, the report
# --------------------------------------------------------------------------------------------

def recorded_outcomes(session: Session, limit: int = 200_000) -> list[Outcome]:
    """Shipments whose outcome is known: delivered, or flagged for a person (an exception).

    On time: delivered within the promise counted from the label purchase (the day the
    parcel left). Exception: flagged (tracking silent, a carrier exception) or returned.
    """
    rows = session.execute(
        select(Shipment, OrderRow.lane, OrderRow.weight_g, OrderRow.total_usd)
        .join(OrderRow, OrderRow.id == Shipment.order_id)
        .where(Shipment.rate.is_not(None), Shipment.label_bought_at.is_not(None),
               Shipment.promise_days.is_not(None), Shipment.est_delivery_days.is_not(None),
               or_(Shipment.delivered_at.is_not(None), Shipment.flagged_at.is_not(None),
                   Shipment.status == ShipmentStatus.RETURNED))
        .order_by(Shipment.id.desc()).limit(limit)
    ).all()
    out = []
    for s, lane, weight_g, total_usd in rows:
        assert s.label_bought_at is not None and s.promise_days is not None
        transit = ((s.delivered_at - s.label_bought_at).total_seconds() / 86_400
                   if s.delivered_at else None)
        out.append(Outcome(
            ParcelFeatures(s.zone or "", lane or "standard", weight_g, float(total_usd),
                           s.promise_days),
            Rate(s.carrier, s.service, s.rate or Decimal(0), "USD", s.est_delivery_days or 0),
            on_time=transit is not None and transit <= s.promise_days,
            exception=s.flagged_at is not None or s.status == ShipmentStatus.RETURNED,
            arm=s.routing_arm or RULES, transit_days=transit))
    return out


def store_model(session: Session, models: RoutingModels) -> int:
    row = RoutingModel(trained_at=models.trained_at, rows=models.rows, model=models.dumps(),
                       metrics=models.metrics)
    session.add(row)
    session.flush()
    return row.id


_loaded: dict[str, tuple[int, RoutingModels]] = {}


def latest_models(session: Session) -> RoutingModels | None:
    """The newest stored model (decoded once per process and model id)."""
    head = session.execute(select(RoutingModel.id, RoutingModel.rows, RoutingModel.trained_at)
                           .order_by(RoutingModel.id.desc()).limit(1)).one_or_none()
    if head is None:
        return None
    cached = _loaded.get("latest")
    if cached is not None and cached[0] == head.id:
        return cached[1]
    blob = session.execute(select(RoutingModel.model).where(RoutingModel.id == head.id)
                           ).scalar_one()
    models = RoutingModels.loads(blob, head.rows, head.trained_at)
    _loaded["latest"] = (head.id, models)
    return models


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def mean_ci(values: Sequence[float], z: float = 1.96) -> Interval:
    """Mean with a normal-approximation 95% interval."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    m = float(np.mean(values))
    half = z * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return Interval(m, m - half, m + half)


def wilson_ci(successes: int, n: int, z: float = 1.96) -> Interval:
    """A proportion with its Wilson 95% interval (sound near 0 and 1, unlike the normal)."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, centre - half, centre + half)


@dataclass(frozen=True)
class ArmReport:
    arm: str
    orders: int
    cost: Interval  # label price per order
    on_time: Interval
    exceptions: Interval


def compare_arms(outcomes: Iterable[Outcome]) -> dict[str, ArmReport]:
    """Per A/B arm: orders, cost per order, on-time and exception rates with 95% intervals."""
    by_arm: dict[str, list[Outcome]] = {a: [] for a in ARMS}
    for o in outcomes:
        by_arm.setdefault(o.arm, []).append(o)
    return {arm: ArmReport(arm, len(rows), mean_ci([float(o.rate.rate) for o in rows]),
                           wilson_ci(sum(o.on_time for o in rows), len(rows)),
                           wilson_ci(sum(o.exception for o in rows), len(rows)))
            for arm, rows in by_arm.items()}


def retrain(session: Session, min_rows: int) -> tuple[int | None, int]:
    """Train on every recorded outcome and store the model; (model id or None, rows)."""
    outcomes = recorded_outcomes(session)
    if len(outcomes) < min_rows:
        return None, len(outcomes)
    return store_model(session, train(outcomes)), len(outcomes)


def strategy_for(order_id: int, models: RoutingModels | None, settings: Any) -> RoutingStrategy:
    """The strategy that routes this order: its A/B arm's, the rules while no model exists."""
    if models is not None and arm_for(order_id, settings.routing_learned_share) == LEARNED:
        return LearnedStrategy(models, settings.routing_late_penalty_usd,
                               settings.routing_exception_penalty_usd)
    return RuleStrategy()


