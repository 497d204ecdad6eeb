"""A sandbox shipping carrier: a real HTTP server that stands in for a carrier API.

It serves two carriers, ``sbx-post`` (economical, domestic-oriented) and ``sbx-air`` (express,
international), and behaves like a real carrier where it matters to the pipeline:

* label purchase is idempotent on ``idempotency_key`` (a replay returns the same label and is
  not charged again), so one label per shipment holds even when a worker retries;
* tracking progresses with time; ``time_scale`` speeds carrier time up so a demo or a test sees
  a parcel delivered in seconds instead of days;
* ``/v1/stats`` counts what was charged, so tests can prove exactly-one-label-per-shipment;
* faults are injected per run (flags) or live (``/v1/admin/faults``): latency, 5xx, 429 with
  Retry-After, timeouts, and labels charged whose answer is lost;
* it also speaks EasyPost's REST dialect (``/v2``: shipments, rates, buy, batches, trackers)
  and can push tracking changes to a webhook (``--webhook-url``).

State lives in memory (one process, guarded by a lock). Run it with
``python -m sandbox.carrier --port 8765 --time-scale 3600``, or in-process with
:class:`SandboxCarrierServer` (tests) or :func:`serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from domain.carriers.statuses import to_easypost_status
from sandbox.threaded_server import ThreadedServer

CARRIERS: tuple[str, ...] = ("sbx-post", "sbx-air")
MAX_BATCH_LABELS = 500
MAX_TRACKING_NUMBERS = 1000
CURRENCY = "USD"

_TRACKING_PREFIX = {"sbx-post": "SBXP", "sbx-air": "SBXA"}
# A postal carrier takes lighter parcels than an air express carrier.
_MAX_WEIGHT_G = {"sbx-post": 30_000, "sbx-air": 70_000}
_WEIGHT_STEP_G = 500  # rates are charged per started 500 g


@dataclass(frozen=True)
class _Tariff:
    base: Decimal  # first 500 g
    per_step: Decimal  # each further started 500 g
    days: int  # estimated delivery days


# (carrier, service, zone) -> tariff. sbx-post is cheaper and slower than sbx-air.
_TARIFFS: dict[tuple[str, str, str], _Tariff] = {
    ("sbx-post", "ground", "domestic"): _Tariff(Decimal("4.50"), Decimal("0.90"), 4),
    ("sbx-post", "ground", "international"): _Tariff(Decimal("14.00"), Decimal("3.20"), 10),
    ("sbx-post", "express", "domestic"): _Tariff(Decimal("8.90"), Decimal("1.40"), 2),
    ("sbx-post", "express", "international"): _Tariff(Decimal("24.00"), Decimal("4.50"), 6),
    ("sbx-air", "ground", "domestic"): _Tariff(Decimal("7.20"), Decimal("1.30"), 3),
    ("sbx-air", "ground", "international"): _Tariff(Decimal("19.50"), Decimal("4.10"), 5),
    ("sbx-air", "express", "domestic"): _Tariff(Decimal("14.90"), Decimal("2.10"), 1),
    ("sbx-air", "express", "international"): _Tariff(Decimal("34.00"), Decimal("6.80"), 2),
}
SERVICES: dict[str, tuple[str, ...]] = {
    carrier: tuple(sorted({s for c, s, _ in _TARIFFS if c == carrier})) for carrier in CARRIERS
}

# Carrier hours after label creation at which the parcel reaches out_for_delivery.
_OUT_FOR_DELIVERY_H = {"sbx-post": 48.0, "sbx-air": 36.0}
_PICKUP_H = 6.0
_HUB_H = 20.0
_DELIVERY_ROUND_H = 6.0  # out_for_delivery -> delivered (or failed_attempt)
_REDELIVERY_H = 24.0  # failed_attempt -> next out_for_delivery

# A few real cities per country so tracking pages look plausible. Unknown countries fall back
# to a generic facility name.
_CITIES: dict[str, tuple[str, ...]] = {
    "US": ("Memphis, TN", "Louisville, KY", "Chicago, IL", "Newark, NJ", "Los Angeles, CA"),
    "CA": ("Toronto, ON", "Montreal, QC", "Vancouver, BC", "Calgary, AB"),
    "MX": ("Mexico City", "Guadalajara", "Monterrey"),
    "GB": ("London", "Birmingham", "Manchester", "Coventry"),
    "IE": ("Dublin", "Cork", "Galway"),
    "DE": ("Leipzig", "Frankfurt am Main", "Berlin", "Hamburg", "Munich"),
    "FR": ("Paris", "Lyon", "Marseille", "Roissy-en-France"),
    "NL": ("Amsterdam", "Rotterdam", "Utrecht"),
    "BE": ("Brussels", "Antwerp", "Liege"),
    "ES": ("Madrid", "Barcelona", "Valencia"),
    "IT": ("Milan", "Rome", "Bologna"),
    "AT": ("Vienna", "Graz", "Linz"),
    "CH": ("Zurich", "Basel", "Geneva"),
    "SE": ("Stockholm", "Gothenburg", "Malmo"),
    "DK": ("Copenhagen", "Aarhus", "Odense"),
    "PL": ("Warsaw", "Poznan", "Wroclaw"),
    "JP": ("Tokyo", "Osaka", "Nagoya"),
    "AU": ("Sydney", "Melbourne", "Brisbane"),
    "NZ": ("Auckland", "Wellington", "Christchurch"),
    "SG": ("Singapore",),
    "BR": ("Sao Paulo", "Rio de Janeiro", "Curitiba"),
}

_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
# Empty is allowed: AE, HK, QA and others have no postal codes.
_POSTAL_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9 -]{0,15})?$")
_MAX_TEXT = 255


class _BadRequest(Exception):
    """A request the carrier refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _zone(from_country: str, to_country: str) -> str:
    return "domestic" if from_country == to_country else "international"


def quote(carrier: str, service: str, from_country: str, to_country: str, weight_g: int) -> Decimal:
    """The price of one label: a deterministic function of carrier, service, zone and weight."""
    tariff = _TARIFFS[(carrier, service, _zone(from_country, to_country))]
    steps = max(1, math.ceil(weight_g / _WEIGHT_STEP_G))
    return (tariff.base + tariff.per_step * (steps - 1)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP
    )


@dataclass(frozen=True)
class _LabelRequest:
    idempotency_key: str
    carrier: str
    service: str
    from_country: str
    to_country: str
    to_postal_code: str
    weight_g: int
    reference: str


def _require_text(body: Mapping[str, Any], name: str, *, optional: bool = False) -> str:
    value = body.get(name, "" if optional else None)
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise _BadRequest(f"{name}: required, must be a non-empty string")
    if len(value) > _MAX_TEXT:
        raise _BadRequest(f"{name}: longer than {_MAX_TEXT} characters")
    return value


def _require_country(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not _COUNTRY_RE.match(value):
        raise _BadRequest(f"{name}: must be an ISO 3166-1 alpha-2 code such as 'US'")
    return value


def _require_carrier(value: Any) -> str:
    if value not in CARRIERS:
        raise _BadRequest(f"carrier: unknown carrier {value!r}, expected one of {list(CARRIERS)}")
    return str(value)


def _require_weight(value: Any, carrier: str) -> int:
    # bool is an int in Python; a carrier would not accept `true` grams.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _BadRequest("weight_g: must be a positive integer (grams)")
    if value > _MAX_WEIGHT_G[carrier]:
        raise _BadRequest(f"weight_g: {carrier} accepts at most {_MAX_WEIGHT_G[carrier]} g")
    return value


def _parse_label_request(body: Any) -> _LabelRequest:
    if not isinstance(body, dict):
        raise _BadRequest("label request must be a JSON object")
    key = _require_text(body, "idempotency_key")
    carrier = _require_carrier(body.get("carrier"))
    service = body.get("service")
    if service not in SERVICES[carrier]:
        raise _BadRequest(
            f"service: {carrier} has no service {service!r}, expected one of "
            f"{list(SERVICES[carrier])}"
        )
    from_country = _require_country(body, "from_country")
    to_country = _require_country(body, "to_country")
    postal = body.get("to_postal_code")
    if not isinstance(postal, str) or not _POSTAL_RE.match(postal):
        raise _BadRequest("to_postal_code: letters/digits/space/dash, max 16 (empty where the "
                          "country has no postal codes)")
    weight_g = _require_weight(body.get("weight_g"), carrier)
    reference = _require_text(body, "reference", optional=True)
    return _LabelRequest(
        key, carrier, str(service), from_country, to_country, postal, weight_g, reference
    )


@dataclass
class _Label:
    request: _LabelRequest
    label_id: str
    tracking_number: str
    rate: Decimal
    created_ts: float
    failed_attempt: bool  # this parcel misses its first delivery round (see failed_attempt_rate)
    voided_ts: float | None = None

    def to_json(self, *, replayed: bool) -> dict[str, Any]:
        return {
            "idempotency_key": self.request.idempotency_key,
            "label_id": self.label_id,
            "tracking_number": self.tracking_number,
            "carrier": self.request.carrier,
            "service": self.request.service,
            "rate": str(self.rate),
            "currency": CURRENCY,
            "created_at": _iso(self.created_ts),
            "replayed": replayed,
        }


@dataclass(frozen=True)
class _Milestone:
    hours: float  # carrier hours after label creation
    status: str
    location: str
    message: str


def _city(country: str, salt: str, pick: int) -> str:
    cities = _CITIES.get(country)
    if not cities:
        return f"{country} sorting centre"
    # crc32, not hash(): locations must be stable across processes and restarts.
    return f"{cities[(zlib.crc32(salt.encode()) + pick) % len(cities)]}, {country}"


def _milestones(label: _Label) -> list[_Milestone]:
    req = label.request
    tn = label.tracking_number
    origin = _city(req.from_country, tn, 0)
    origin_hub = _city(req.from_country, tn, 1)
    destination = _city(req.to_country, tn, 2)
    international = req.from_country != req.to_country
    if req.carrier == "sbx-air" and international:
        hub_message = f"Departed origin country ({req.from_country})"
    elif req.carrier == "sbx-air":
        hub_message = "Departed origin hub"
    else:
        hub_message = "Arrived at sorting hub"
    ofd = _OUT_FOR_DELIVERY_H[req.carrier]
    plan = [
        _Milestone(0.0, "info_received", origin, "Shipment information received"),
        _Milestone(_PICKUP_H, "in_transit", origin, "Picked up by carrier"),
        _Milestone(_HUB_H, "in_transit", origin_hub, hub_message),
        _Milestone(ofd, "out_for_delivery", destination, "Out for delivery"),
    ]
    if label.failed_attempt:
        retry = ofd + _DELIVERY_ROUND_H + _REDELIVERY_H
        plan += [
            _Milestone(
                ofd + _DELIVERY_ROUND_H,
                "failed_attempt",
                destination,
                "Delivery attempted, recipient not available",
            ),
            _Milestone(retry, "out_for_delivery", destination, "Out for delivery (2nd attempt)"),
            _Milestone(retry + _DELIVERY_ROUND_H, "delivered", destination, "Delivered"),
        ]
    else:
        plan.append(_Milestone(ofd + _DELIVERY_ROUND_H, "delivered", destination, "Delivered"))
    return plan


# --------------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------------

FAULT_KINDS: tuple[str, ...] = ("error", "rate_limit", "timeout", "lost")
# What a request does, for faults aimed at one kind of call ("lose label purchases only").
OPERATIONS: tuple[str, ...] = ("labels", "lookup", "void", "tracking", "rates")


@dataclass(frozen=True)
class FaultProfile:
    """What goes wrong at this carrier, set per run (CLI flags) or live (``/v1/admin/faults``).

    Each API request draws at most one fault, with these probabilities:

    * ``error_rate``: a 500, 502 or 503 (nothing was done);
    * ``rate_limit_rate``: a 429 with ``Retry-After: retry_after_s`` (nothing was done);
    * ``timeout_rate``: no answer for ``hang_s`` seconds, then a 504 (nothing was done);
    * ``lost_rate``: the request is carried out (a label is charged), then the answer is held
      for ``hang_s`` seconds, past the client's timeout: "charged, but the response was lost".

    ``latency_ms`` (+ up to ``latency_jitter_ms``) delays every affected request. ``carriers``
    limits the faults to requests about those carriers, ``operations`` to those operations
    (``OPERATIONS``; empty: all). ``duration_s`` makes the profile lapse on its own (an outage
    of a set length). ``seed`` makes the draws repeatable.
    """

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0
    lost_rate: float = 0.0
    hang_s: float = 30.0
    carriers: tuple[str, ...] = ()
    operations: tuple[str, ...] = ()
    duration_s: float | None = None
    seed: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> FaultProfile:
        """Validate an admin request; a _BadRequest names the faulty field."""
        if not isinstance(body, dict):
            raise _BadRequest("faults: must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        for name in body:
            if name not in known:
                raise _BadRequest(f"{name}: unknown fault setting, expected one of "
                                  f"{sorted(known)}")
        values: dict[str, Any] = {}
        for name in ("latency_ms", "latency_jitter_ms", "error_rate", "rate_limit_rate",
                     "retry_after_s", "timeout_rate", "lost_rate", "hang_s", "duration_s"):
            if name in body and body[name] is not None:
                v = body[name]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise _BadRequest(f"{name}: must be a non-negative number")
                values[name] = float(v)
        if "carriers" in body:
            carriers = body["carriers"]
            if not isinstance(carriers, list):
                raise _BadRequest("carriers: must be a list of carrier codes")
            values["carriers"] = tuple(_require_carrier(c) for c in carriers)
        if "operations" in body:
            ops = body["operations"]
            if not isinstance(ops, list) or any(op not in OPERATIONS for op in ops):
                raise _BadRequest(f"operations: must be a list of {list(OPERATIONS)}")
            values["operations"] = tuple(ops)
        if body.get("seed") is not None:
            if isinstance(body["seed"], bool) or not isinstance(body["seed"], int):
                raise _BadRequest("seed: must be an integer")
            values["seed"] = body["seed"]
        profile = cls(**values)
        profile.validate()
        return profile

    def validate(self) -> None:
        for name in ("error_rate", "rate_limit_rate", "timeout_rate", "lost_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise _BadRequest(f"{name}: must be within 0..1")
        total = self.error_rate + self.rate_limit_rate + self.timeout_rate + self.lost_rate
        if total > 1.0 + 1e-9:
            raise _BadRequest(f"error_rate + rate_limit_rate + timeout_rate + lost_rate: "
                              f"{total:.3f} exceeds 1")

    @property
    def fault_rate(self) -> float:
        return self.error_rate + self.rate_limit_rate + self.timeout_rate + self.lost_rate

    def draw(self, u: float) -> str | None:
        """The fault for a uniform draw ``u`` in [0, 1), or None."""
        edge = 0.0
        for kind, rate in (("error", self.error_rate), ("rate_limit", self.rate_limit_rate),
                           ("timeout", self.timeout_rate), ("lost", self.lost_rate)):
            edge += rate
            if u < edge:
                return kind
        return None

    def to_json(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["carriers"] = list(self.carriers)
        out["operations"] = list(self.operations)
        return out


@dataclass
class _Stats:
    labels_purchased: int = 0  # unique labels charged
    label_requests: int = 0  # every label item received, single or in a batch
    replays: int = 0
    label_errors: int = 0
    labels_voided: int = 0
    batch_requests: int = 0
    tracking_requests: int = 0
    lookups: int = 0
    api_requests: int = 0  # every API request (not health, stats or admin)
    faults_error: int = 0
    faults_rate_limit: int = 0
    faults_timeout: int = 0
    faults_lost: int = 0
    lost_labels: int = 0  # labels charged whose answer was lost
    pushes: int = 0  # tracking pushes the webhook accepted
    push_failures: int = 0


@dataclass
class CarrierState:
    """The carrier's books. One lock: the server is one process and requests are short."""

    time_scale: float
    seed: int
    failed_attempt_rate: float
    clock: Callable[[], float]
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_id: dict[str, _Label] = field(default_factory=dict)
    by_key: dict[str, _Label] = field(default_factory=dict)
    by_tracking: dict[str, _Label] = field(default_factory=dict)
    stats: _Stats = field(default_factory=_Stats)
    faults: FaultProfile = field(default_factory=FaultProfile)
    faults_until: float | None = None  # monotonic deadline of a profile with duration_s
    # The EasyPost dialect's objects.
    ep_shipments: dict[str, dict[str, Any]] = field(default_factory=dict)
    ep_by_reference: dict[str, list[str]] = field(default_factory=dict)
    ep_batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Not reset by reset(): numbers stay unique for the server's whole life, so a client that
    # kept an old tracking number never sees it reused for someone else's parcel.
    rng: random.Random = field(init=False)
    fault_rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.fault_rng = random.Random(self.seed)

    def reset(self) -> None:
        with self.lock:
            self.by_id.clear()
            self.by_key.clear()
            self.by_tracking.clear()
            self.ep_shipments.clear()
            self.ep_by_reference.clear()
            self.ep_batches.clear()
            self.stats = _Stats()
            self.faults, self.faults_until = FaultProfile(), None

    def set_faults(self, profile: FaultProfile) -> None:
        """Caller holds the lock."""
        self.faults = profile
        self.faults_until = (time.monotonic() + profile.duration_s
                             if profile.duration_s is not None else None)
        if profile.seed is not None:
            self.fault_rng = random.Random(profile.seed)

    def active_faults(self) -> FaultProfile:
        """Caller holds the lock. A profile past its duration lapses to no faults."""
        if self.faults_until is not None and time.monotonic() >= self.faults_until:
            self.faults, self.faults_until = FaultProfile(), None
        return self.faults

    def _new_tracking_number(self, carrier: str) -> str:
        while True:
            body = f"{self.rng.randrange(10**11):011d}"
            # A mod-10 check digit, as real carriers use to catch typos.
            check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10) % 10
            number = f"{_TRACKING_PREFIX[carrier]}{body}{check}"
            if number not in self.by_tracking:
                return number

    def _new_label_id(self) -> str:
        while True:
            label_id = f"LBL-{self.rng.getrandbits(64):016X}"
            if label_id not in self.by_id:
                return label_id

    def new_object_id(self, prefix: str) -> str:
        return f"{prefix}_{self.rng.getrandbits(128):032x}"

    def issue(self, req: _LabelRequest, *, keyed: bool = True) -> _Label:
        """Charge a new label. Caller holds the lock. ``keyed``: remember it by its key."""
        tracking_number = self._new_tracking_number(req.carrier)
        draw = zlib.crc32(f"{self.seed}:{tracking_number}".encode()) % 10_000
        label = _Label(
            request=req,
            label_id=self._new_label_id(),
            tracking_number=tracking_number,
            rate=quote(req.carrier, req.service, req.from_country, req.to_country, req.weight_g),
            created_ts=self.clock(),
            failed_attempt=draw < self.failed_attempt_rate * 10_000,
        )
        self.by_id[label.label_id] = label
        if keyed:
            self.by_key[req.idempotency_key] = label
        self.by_tracking[tracking_number] = label
        self.stats.labels_purchased += 1
        return label

    def buy(self, req: _LabelRequest) -> tuple[_Label, bool]:
        """Return (label, replayed). Caller holds the lock."""
        self.stats.label_requests += 1
        existing = self.by_key.get(req.idempotency_key)
        if existing is not None:
            # Same key, different parcel: almost certainly a client bug; refusing it is safer
            # than handing back a label for another address.
            if existing.request != req:
                self.stats.label_errors += 1
                raise _BadRequest(
                    "idempotency_key: already used for a different label request", status=409
                )
            self.stats.replays += 1
            return existing, True
        return self.issue(req), False

    def void(self, label: _Label) -> None:
        """Caller holds the lock. Voiding twice is a no-op."""
        if label.voided_ts is None:
            label.voided_ts = self.clock()
            self.stats.labels_voided += 1

    def tracker(self, tracking_number: str, now: float) -> dict[str, Any]:
        """Caller holds the lock."""
        label = self.by_tracking.get(tracking_number)
        if label is None:
            return {"tracking_number": tracking_number, "status": "unknown", "events": []}
        hours_per_second = self.time_scale / 3600.0
        cutoff_ts = now if label.voided_ts is None else min(now, label.voided_ts)
        elapsed_h = (cutoff_ts - label.created_ts) * hours_per_second
        events = [
            {
                "status": m.status,
                "at": _iso(label.created_ts + m.hours / hours_per_second),
                "location": m.location,
                "message": m.message,
            }
            for m in _milestones(label)
            if m.hours <= elapsed_h
        ]
        if label.voided_ts is not None:
            # A voided label's parcel goes nowhere; say so as an exception event.
            events.append(
                {
                    "status": "exception",
                    "at": _iso(label.voided_ts),
                    "location": events[-1]["location"] if events else "",
                    "message": "label voided",
                }
            )
        for n, event in enumerate(events, start=1):
            event["id"] = f"{tracking_number}-{n}"
        status = events[-1]["status"] if events else "info_received"
        return {"tracking_number": tracking_number, "status": status, "events": events}


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadRequest("body is not valid JSON", status=400) from exc


_ERROR_STATUSES = (500, 502, 503)


async def _inject(state: CarrierState, carriers: set[str],
                  operation: str) -> tuple[str | None, Response | None]:
    """Draw this request's fault. Returns (fault, early response): a response to send instead
    of doing the work (5xx, 429, timeout), or None to go on (a "lost" fault is applied by the
    caller after the work is done)."""
    with state.lock:
        state.stats.api_requests += 1
        profile = state.active_faults()
        if profile.carriers and not carriers & set(profile.carriers):
            return None, None
        if profile.operations and operation not in profile.operations:
            return None, None
        fault = profile.draw(state.fault_rng.random())
        jitter = state.fault_rng.random() * profile.latency_jitter_ms
        status = state.fault_rng.choice(_ERROR_STATUSES)
        if fault is not None:
            setattr(state.stats, f"faults_{fault}", getattr(state.stats, f"faults_{fault}") + 1)
    delay_s = (profile.latency_ms + jitter) / 1000.0
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    if fault == "error":
        return fault, _error("injected fault: carrier error", status)
    if fault == "rate_limit":
        return fault, JSONResponse({"error": "rate limited, slow down"}, status_code=429,
                                   headers={"Retry-After": f"{profile.retry_after_s:g}"})
    if fault == "timeout":
        await asyncio.sleep(profile.hang_s)
        return fault, _error("injected fault: gateway timeout", 504)
    return fault, None


async def _deliver(state: CarrierState, fault: str | None, response: Response,
                   charged: int = 0) -> Response:
    """Send the response, or hold it past the client's timeout when the answer is "lost".

    ``charged``: labels this request charged, counted as ``lost_labels`` when lost.
    """
    if fault == "lost":
        with state.lock:
            hang_s = state.faults.hang_s
            state.stats.lost_labels += charged
        await asyncio.sleep(hang_s)
    return response


# --------------------------------------------------------------------------------------------
# EasyPost dialect helpers
# --------------------------------------------------------------------------------------------

_GRAMS_PER_OUNCE = 28.349523125


def _ep_error(code: str, message: str, status: int, field_name: str | None = None) -> JSONResponse:
    err: dict[str, Any] = {"code": code, "message": message, "errors": []}
    if field_name:
        err["errors"] = [{"field": field_name, "message": message}]
    return JSONResponse({"error": err}, status_code=status)


class _EpBadRequest(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name, self.message = field_name, message


def _ep_country(addr: Any, name: str) -> str:
    country = addr.get("country") if isinstance(addr, dict) else None
    if not isinstance(country, str) or not _COUNTRY_RE.match(country):
        raise _EpBadRequest(f"{name}.country", "must be an ISO 3166-1 alpha-2 code")
    return country


def _ep_parse_shipment(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _EpBadRequest("shipment", "must be an object")
    to_country = _ep_country(body.get("to_address"), "shipment.to_address")
    from_country = _ep_country(body.get("from_address"), "shipment.from_address")
    parcel = body.get("parcel")
    weight = parcel.get("weight") if isinstance(parcel, dict) else None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise _EpBadRequest("shipment.parcel.weight", "must be a positive number of ounces")
    reference = body.get("reference")
    if reference is not None and (not isinstance(reference, str) or len(reference) > _MAX_TEXT):
        raise _EpBadRequest("shipment.reference", "must be a string")
    carrier, service = body.get("carrier"), body.get("service")
    if (carrier is None) != (service is None):
        raise _EpBadRequest("shipment.service", "carrier and service go together")
    postal = str((body.get("to_address") or {}).get("zip", ""))
    return {
        "to_address": body["to_address"], "from_address": body["from_address"],
        "to_country": to_country, "from_country": from_country,
        "weight_g": max(1, math.ceil(float(weight) * _GRAMS_PER_OUNCE)),
        "weight_oz": float(weight), "reference": reference, "carrier": carrier,
        "service": service, "to_postal_code": postal,
    }


def _ep_location(location: str) -> dict[str, Any]:
    parts = [p.strip() for p in location.split(",")] if location else []
    country = parts[-1] if parts and _COUNTRY_RE.match(parts[-1]) else None
    return {"object": "TrackingLocation", "city": parts[0] if parts else None,
            "state": parts[1] if len(parts) == 3 else None, "country": country, "zip": None}


class TrackingPusher:
    """Pushes tracker changes to a webhook, as carriers' tracking webhooks do.

    Every ``interval_s`` it sends the trackers whose status changed since the last successful
    push, as ``{"trackers": [...]}`` in the carrier's own format, signed like EasyPost's
    webhooks (``X-Hmac-Signature: hmac-sha256-hex=...``) when a secret is set. A failed push
    is sent again on the next round.
    """

    def __init__(self, state: CarrierState, url: str, secret: str | None = None,
                 interval_s: float = 1.0) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise _BadRequest("url: must be an http(s) URL")
        if not interval_s > 0:
            raise _BadRequest("interval_s: must be positive")
        self.state, self.url, self.secret, self.interval_s = state, url, secret, interval_s
        self._pushed: dict[str, str] = {}  # tracking number -> status last pushed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-carrier-push",
                                        daemon=True)

    def start(self) -> TrackingPusher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def push_once(self) -> int:
        """Push what changed; returns the number of trackers delivered to the webhook."""
        with self.state.lock:
            now = self.state.clock()
            changed = [t for t in (self.state.tracker(n, now) for n in self.state.by_tracking)
                       if self._pushed.get(t["tracking_number"]) != t["status"]]
        sent = 0
        for start in range(0, len(changed), 500):
            chunk = changed[start:start + 500]
            body = json.dumps({"trackers": chunk}).encode()
            headers = {"Content-Type": "application/json"}
            if self.secret:
                digest = hmac.new(unicodedata.normalize("NFKD", self.secret).encode(), body,
                                  hashlib.sha256).hexdigest()
                headers["X-Hmac-Signature"] = f"hmac-sha256-hex={digest}"
            try:
                ok = httpx.post(self.url, content=body, headers=headers, timeout=10).is_success
            except (httpx.HTTPError, httpx.InvalidURL):
                ok = False  # the receiver is down: pushed again next round
            with self.state.lock:
                if ok:
                    self.state.stats.pushes += 1
                else:
                    self.state.stats.push_failures += 1
            if ok:
                self._pushed.update({t["tracking_number"]: t["status"] for t in chunk})
                sent += len(chunk)
        return sent

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push_once()


def create_app(
    time_scale: float = 1.0,
    seed: int = 0,
    *,
    failed_attempt_rate: float = 0.0,
    clock: Callable[[], float] = time.time,
    faults: FaultProfile | None = None,
    easypost_api_key: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    webhook_interval_s: float = 1.0,
) -> Starlette:
    """Build the sandbox carrier.

    ``time_scale`` is carrier seconds per real second (3600: one carrier hour per second).
    ``seed`` makes tracking numbers, label ids and fault draws reproducible.
    ``failed_attempt_rate`` (0..1) is the share of parcels that miss their first delivery round
    (off by default, so a parcel's timeline is exactly the documented one). ``clock`` (epoch
    seconds) is injectable for tests. ``faults`` is the fault profile to start with.
    ``easypost_api_key``: the key the EasyPost dialect (``/v2``) accepts (any when None).
    ``webhook_url``: where to push tracking changes (see :class:`TrackingPusher`).
    """
    if not time_scale > 0:
        raise ValueError("time_scale must be positive")
    if not 0.0 <= failed_attempt_rate <= 1.0:
        raise ValueError("failed_attempt_rate must be within 0..1")
    state = CarrierState(
        time_scale=time_scale, seed=seed, failed_attempt_rate=failed_attempt_rate, clock=clock
    )
    if faults is not None:
        faults.validate()
        state.set_faults(faults)
    pusher: dict[str, TrackingPusher | None] = {"current": None}

    def set_pusher(new: TrackingPusher | None) -> None:
        old, pusher["current"] = pusher["current"], new
        if old is not None:
            old.stop()
        if new is not None:
            new.start()

    if webhook_url:
        set_pusher(TrackingPusher(state, webhook_url, webhook_secret, webhook_interval_s))

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    # -- our own dialect (/v1) -------------------------------------------------------------------

    async def buy_label(request: Request) -> Response:
        body = await _json_body(request)
        carrier = body.get("carrier") if isinstance(body, dict) else None
        fault, early = await _inject(state, {carrier} if isinstance(carrier, str) else set(),
                                     "labels")
        if early is not None:
            return early
        with state.lock:
            try:
                req = _parse_label_request(body)
            except _BadRequest:
                state.stats.label_requests += 1
                state.stats.label_errors += 1
                raise
            label, replayed = state.buy(req)
            response = JSONResponse(label.to_json(replayed=replayed))
        return await _deliver(state, fault, response, charged=0 if replayed else 1)

    async def buy_batch(request: Request) -> Response:
        body = await _json_body(request)
        items = body.get("labels") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise _BadRequest("labels: required, must be a list of label requests")
        if len(items) > MAX_BATCH_LABELS:
            raise _BadRequest(f"labels: at most {MAX_BATCH_LABELS} per batch", status=413)
        carriers = {i.get("carrier") for i in items if isinstance(i, dict)} - {None}
        fault, early = await _inject(state, {str(c) for c in carriers}, "labels")
        if early is not None:
            return early
        labels: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        with state.lock:
            state.stats.batch_requests += 1
            for index, item in enumerate(items):
                try:
                    req = _parse_label_request(item)
                except _BadRequest as exc:
                    state.stats.label_requests += 1
                    state.stats.label_errors += 1
                    key = item.get("idempotency_key") if isinstance(item, dict) else None
                    errors.append(
                        {
                            "idempotency_key": key if isinstance(key, str) else None,
                            "index": index,
                            "error": exc.message,
                        }
                    )
                    continue
                try:
                    label, replayed = state.buy(req)
                except _BadRequest as exc:
                    errors.append(
                        {
                            "idempotency_key": req.idempotency_key,
                            "index": index,
                            "error": exc.message,
                        }
                    )
                    continue
                labels.append(label.to_json(replayed=replayed))
        charged = sum(not label["replayed"] for label in labels)
        return await _deliver(state, fault, JSONResponse({"labels": labels, "errors": errors}),
                              charged=charged)

    async def label_by_key(request: Request) -> Response:
        key = request.path_params["idempotency_key"]
        with state.lock:
            label = state.by_key.get(key)
        fault, early = await _inject(state, {label.request.carrier} if label else set(),
                                     "lookup")
        if early is not None:
            return early
        with state.lock:
            state.stats.lookups += 1
            if label is None:
                return _error("not found", 404)
            # A look-up is not a purchase: report it as the original, not a replay.
            response = JSONResponse(label.to_json(replayed=False))
        return await _deliver(state, fault, response)

    async def lookup_labels(request: Request) -> Response:
        body = await _json_body(request)
        keys = body.get("idempotency_keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _BadRequest("idempotency_keys: required, must be a list of strings")
        if len(keys) > MAX_TRACKING_NUMBERS:
            raise _BadRequest(f"idempotency_keys: at most {MAX_TRACKING_NUMBERS} per request",
                              status=413)
        with state.lock:
            found = [state.by_key[k] for k in keys if k in state.by_key]
        # A look-up of keys never bought is still about the carrier the caller names: during
        # that carrier's outage it must fail like any other call to it.
        asked = body.get("carrier")
        scope = {lb.request.carrier for lb in found}
        if isinstance(asked, str):
            scope.add(asked)
        fault, early = await _inject(state, scope, "lookup")
        if early is not None:
            return early
        with state.lock:
            state.stats.lookups += 1
            found_keys = {lb.request.idempotency_key for lb in found}
            response = JSONResponse({"labels": [lb.to_json(replayed=False) for lb in found],
                                     "missing": [k for k in keys if k not in found_keys]})
        return await _deliver(state, fault, response)

    async def void_label(request: Request) -> Response:
        label_id = request.path_params["label_id"]
        with state.lock:
            label = state.by_id.get(label_id)
        fault, early = await _inject(state, {label.request.carrier} if label else set(),
                                     "void")
        if early is not None:
            return early
        with state.lock:
            if label is None:
                return _error("not found", 404)
            state.void(label)
        return await _deliver(state, fault, JSONResponse({"label_id": label_id, "voided": True}))

    async def track(request: Request) -> Response:
        body = await _json_body(request)
        numbers = body.get("tracking_numbers") if isinstance(body, dict) else None
        if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
            raise _BadRequest("tracking_numbers: required, must be a list of strings")
        if len(numbers) > MAX_TRACKING_NUMBERS:
            raise _BadRequest(
                f"tracking_numbers: at most {MAX_TRACKING_NUMBERS} per request", status=413
            )
        by_prefix = {p: c for c, p in _TRACKING_PREFIX.items()}
        fault, early = await _inject(state, {by_prefix.get(n[:4], "") for n in numbers},
                                     "tracking")
        if early is not None:
            return early
        with state.lock:
            state.stats.tracking_requests += 1
            now = state.clock()
            trackers = [state.tracker(n, now) for n in numbers]
        return await _deliver(state, fault, JSONResponse({"trackers": trackers}))

    async def rates(request: Request) -> Response:
        params = request.query_params
        carriers = [_require_carrier(params["carrier"])] if params.get("carrier") else CARRIERS
        from_country = _require_country(params, "from_country")
        to_country = _require_country(params, "to_country")
        try:
            weight_g = int(params.get("weight_g", ""))
        except ValueError:
            raise _BadRequest("weight_g: must be a positive integer (grams)") from None
        if weight_g < 1:
            raise _BadRequest("weight_g: must be a positive integer (grams)")
        fault, early = await _inject(state, set(carriers), "rates")
        if early is not None:
            return early
        out = _rates_for(carriers, from_country, to_country, weight_g)
        return await _deliver(state, fault, JSONResponse({"rates": out}))

    # -- EasyPost dialect (/v2) ----------------------------------------------------------------

    def _ep_authorised(request: Request) -> JSONResponse | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return _ep_error("APIKEY.REQUIRED", "an API key is required (HTTP Basic)", 401)
        try:
            user = base64.b64decode(header[6:]).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return _ep_error("APIKEY.INVALID", "malformed Authorization header", 401)
        if not user or (easypost_api_key is not None and user != easypost_api_key):
            return _ep_error("APIKEY.INVALID", "the API key is not valid", 401)
        return None

    def _ep_rates(shp_id: str, parsed: dict[str, Any]) -> list[dict[str, Any]]:
        """Caller holds the lock."""
        return [
            {"id": state.new_object_id("rate"), "object": "Rate", "shipment_id": shp_id,
             "carrier": r["carrier"], "service": r["service"], "rate": r["rate"],
             "currency": r["currency"], "delivery_days": r["est_delivery_days"],
             "est_delivery_days": r["est_delivery_days"]}
            for r in _rates_for(CARRIERS, parsed["from_country"], parsed["to_country"],
                                parsed["weight_g"])
        ]

    def _ep_create(parsed: dict[str, Any]) -> dict[str, Any]:
        """Create (and, with carrier + service, buy) a shipment. Caller holds the lock."""
        shp_id = state.new_object_id("shp")
        now = _iso(state.clock())
        shipment: dict[str, Any] = {
            "id": shp_id, "object": "Shipment", "mode": "test",
            "reference": parsed["reference"], "created_at": now, "updated_at": now,
            "to_address": parsed["to_address"], "from_address": parsed["from_address"],
            "parcel": {"object": "Parcel", "weight": parsed["weight_oz"]},
            "rates": _ep_rates(shp_id, parsed), "selected_rate": None, "postage_label": None,
            "tracking_code": None, "refund_status": None, "status": "unknown",
            "_parsed": parsed, "_label": None,
        }
        state.ep_shipments[shp_id] = shipment
        if parsed["reference"]:
            state.ep_by_reference.setdefault(parsed["reference"], []).append(shp_id)
        if parsed["carrier"] is not None:
            rate = next((r for r in shipment["rates"] if r["carrier"] == parsed["carrier"]
                         and r["service"] == parsed["service"]), None)
            if rate is None:
                raise _EpBadRequest("shipment.service",
                                    f"no rate for {parsed['carrier']} {parsed['service']}")
            _ep_buy(shipment, rate)
        return shipment

    def _ep_buy(shipment: dict[str, Any], rate: dict[str, Any]) -> None:
        """Charge a label for the shipment (never de-duplicated, as at EasyPost)."""
        parsed = shipment["_parsed"]
        req = _LabelRequest(parsed["reference"] or shipment["id"], rate["carrier"],
                            rate["service"], parsed["from_country"], parsed["to_country"],
                            parsed["to_postal_code"], parsed["weight_g"],
                            parsed["reference"] or "")
        state.stats.label_requests += 1
        label = state.issue(req, keyed=False)
        shipment.update({
            "selected_rate": rate, "tracking_code": label.tracking_number,
            "postage_label": {"object": "PostageLabel",
                              "id": "pl_" + label.label_id.removeprefix("LBL-").lower(),
                              "label_date": _iso(label.created_ts),
                              "label_url": f"/v2/labels/{label.label_id}.png"},
            "updated_at": _iso(state.clock()), "_label": label,
        })

    def _ep_public(shipment: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in shipment.items() if not k.startswith("_")}

    def _ep_find(id_or_reference: str) -> dict[str, Any] | None:
        """By id, or by reference (the purchased one first, as EasyPost allows). Locked."""
        if id_or_reference in state.ep_shipments:
            return state.ep_shipments[id_or_reference]
        ids = state.ep_by_reference.get(id_or_reference, [])
        shipments = [state.ep_shipments[i] for i in ids]
        bought = [s for s in shipments if s["_label"] is not None]
        return (bought or shipments or [None])[-1]

    async def ep_create_shipment(request: Request) -> Response:
        if (denied := _ep_authorised(request)) is not None:
            return denied
        body = await _json_body(request)
        inner = body.get("shipment") if isinstance(body, dict) else None
        carrier = inner.get("carrier") if isinstance(inner, dict) else None
        fault, early = await _inject(state, {carrier} if isinstance(carrier, str)
                                     else set(CARRIERS),
                                     "labels" if isinstance(carrier, str) else "rates")
        if early is not None:
            return early
        with state.lock:
            try:
                parsed = _ep_parse_shipment(inner)
                if parsed["carrier"] is not None:
                    _require_carrier(parsed["carrier"])
                shipment = _ep_create(parsed)
            except _EpBadRequest as exc:
                state.stats.label_errors += 1
                return _ep_error("SHIPMENT.INVALID_PARAMS", exc.message, 422, exc.field_name)
            except _BadRequest as exc:
                return _ep_error("SHIPMENT.INVALID_PARAMS", exc.message, 422, "shipment.carrier")
            response = JSONResponse(_ep_public(shipment), status_code=201)
        return await _deliver(state, fault, response,
                              charged=int(shipment["_label"] is not None))

    async def ep_get_shipment(request: Request) -> Response:
        if (denied := _ep_authorised(request)) is not None:
            return denied
        with state.lock:
            shipment = _ep_find(request.path_params["shipment_id"])
        carrier = (shipment or {}).get("selected_rate") or {}
        fault, early = await _inject(state, {carrier["carrier"]} if carrier else set(),
                                     "lookup")
        if early is not None:
            return early
        with state.lock:
            state.stats.lookups += 1
            if shipment is None:
                return _ep_error("NOT_FOUND", "The requested resource could not be found.", 404)
            response = JSONResponse(_ep_public(shipment))
        return await _deliver(state, fault, response)

    async def ep_buy_shipment(request: Request) -> Response:
        if (denied := _ep_authorised(request)) is not None:
            return denied
        body = await _json_body(request)
        rate_id = ((body or {}).get("rate") or {}).get("id") if isinstance(body, dict) else None
        with state.lock:
            shipment = state.ep_shipments.get(request.path_params["shipment_id"])
        if shipment is None:
            return _ep_error("NOT_FOUND", "The requested resource could not be found.", 404)
        rate = next((r for r in shipment["rates"] if r["id"] == rate_id), None)
        fault, early = await _inject(state, {rate["carrier"]} if rate else set(), "labels")
        if early is not None:
            return early
        with state.lock:
            if shipment["_label"] is not None:
                return _ep_error("SHIPMENT.POSTAGE.EXISTS",
                                 "this shipment already has postage", 422)
            if rate is None:
                return _ep_error("SHIPMENT.RATE.INVALID", "rate.id: not a rate of this shipment",
                                 422, "rate.id")
            _ep_buy(shipment, rate)
            response = JSONResponse(_ep_public(shipment))
        return await _deliver(state, fault, response, charged=1)

    async def ep_refund_shipment(request: Request) -> Response:
        if (denied := _ep_authorised(request)) is not None:
            return denied
        with state.lock:
            shipment = state.ep_shipments.get(request.path_params["shipment_id"])
        label = shipment["_label"] if shipment else None
        fault, early = await _inject(state, {label.request.carrier} if label else set(),
                                     "void")
        if early is not None:
            return early
        with state.lock:
            if shipment is None:
                return _ep_error("NOT_FOUND", "The requested resource could not be found.", 404)
            if label is None:
                return _ep_error("SHIPMENT.REFUND.INVALID", "the shipment has no postage", 422)
            state.void(label)
            shipment["refund_status"] = "submitted"
            response = JSONResponse(_ep_public(shipment))
        return await _deliver(state, fault, response)

    async def ep_create_and_buy_batch(request: Request) -> Response:
        if (denied := _ep_authorised(request)) is not None:
            return denied
        body = await _json_body(request)
        batch_in = body.get("batch") if isinstance(body, dict) else None
        defs = batch_in.get("shipments") if isinstance(batch_in, dict) else None
        if not isinstance(defs, list):
            return _ep_error("BATCH.INVALID_PARAMS", "batch.shipments: must be a list", 422,
                             "batch.shipments")
        carriers = {d.get("carrier") for d in defs if isinstance(d, dict)} - {None}
        fault, early = await _inject(state, {str(c) for c in carriers}, "labels")
        if early is not None:
            return early
        with state.lock:
            state.stats.batch_requests += 1
            batch_id = state.new_object_id("batch")
            entries = []
            for d in defs:
                reference = d.get("reference") if isinstance(d, dict) else None
                try:
                    parsed = _ep_parse_shipment(d)
                    if parsed["carrier"] is None:
                        raise _EpBadRequest("shipment.carrier", "required in a batch purchase")
                    _require_carrier(parsed["carrier"])
                    shipment = _ep_create(parsed)
                except (_EpBadRequest, _BadRequest) as exc:
                    state.stats.label_errors += 1
                    entries.append({"id": None, "reference": reference,
                                    "batch_status": "postage_purchase_failed",
                                    "batch_message": str(exc), "tracking_code": None})
                    continue
                entries.append({"id": shipment["id"], "reference": reference,
                                "batch_status": "postage_purchased", "batch_message": None,
                                "tracking_code": shipment["tracking_code"]})
            now = _iso(state.clock())
            counts = {s: sum(e["batch_status"] == s for e in entries)
                      for s in ("postage_purchased", "postage_purchase_failed")}
            state.ep_batches[batch_id] = {
                "id": batch_id, "object": "Batch", "mode": "test", "state": "purchased",
                "num_shipments": len(entries), "reference": batch_in.get("reference"),
                "shipments": entries, "status": counts, "created_at": now, "updated_at": now,
                "label_url": None,
            }
            # Like EasyPost, the answer comes before the (asynchronous) purchase is visible.
            response = JSONResponse({**state.ep_batches[batch_id], "state": "creating",
                                     "shipments": []})
        return await _deliver(state, fault, response, charged=counts["postage_purchased"])

    async def ep_get_batch(request: Request) -> Response:
        if (denied := _ep_authorised(request)) is not None:
            return denied
        fault, early = await _inject(state, set(CARRIERS), "lookup")
        if early is not None:
            return early
        with state.lock:
            batch = state.ep_batches.get(request.path_params["batch_id"])
            if batch is None:
                return _ep_error("NOT_FOUND", "The requested resource could not be found.", 404)
            response = JSONResponse(batch)
        return await _deliver(state, fault, response)

    async def ep_trackers_batch(request: Request) -> Response:
        if (denied := _ep_authorised(request)) is not None:
            return denied
        body = await _json_body(request)
        codes = body.get("tracking_codes") if isinstance(body, dict) else None
        if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
            return _ep_error("TRACKER.INVALID_PARAMS", "tracking_codes: must be a list of "
                             "strings", 422, "tracking_codes")
        by_prefix = {p: c for c, p in _TRACKING_PREFIX.items()}
        fault, early = await _inject(state, {by_prefix.get(c[:4], "") for c in codes},
                                     "tracking")
        if early is not None:
            return early
        with state.lock:
            state.stats.tracking_requests += 1
            now = state.clock()
            out = []
            for code in codes:
                if code not in state.by_tracking:
                    continue
                ours = state.tracker(code, now)
                status, detail = to_easypost_status(ours["status"])
                label = state.by_tracking[code]
                out.append({
                    "id": "trk_" + code.lower(), "object": "Tracker", "mode": "test",
                    "tracking_code": code, "status": status, "status_detail": detail,
                    "carrier": label.request.carrier,
                    "tracking_details": [
                        {"object": "TrackingDetail", "message": e["message"],
                         "status": to_easypost_status(e["status"])[0],
                         "status_detail": to_easypost_status(e["status"])[1],
                         "datetime": e["at"], "source": label.request.carrier,
                         "tracking_location": _ep_location(e["location"])}
                        for e in ours["events"]
                    ],
                })
            response = JSONResponse({"trackers": out, "has_more": False})
        return await _deliver(state, fault, response)

    # -- sandbox administration ----------------------------------------------------------------

    async def stats(request: Request) -> JSONResponse:
        with state.lock:
            return JSONResponse(dict(vars(state.stats)))

    async def reset(request: Request) -> JSONResponse:
        state.reset()
        return JSONResponse({"ok": True})

    async def get_faults(request: Request) -> JSONResponse:
        with state.lock:
            return JSONResponse(state.active_faults().to_json())

    async def put_faults(request: Request) -> JSONResponse:
        profile = FaultProfile.from_json(await _json_body(request))
        with state.lock:
            state.set_faults(profile)
        return JSONResponse(profile.to_json())

    async def get_webhook(request: Request) -> JSONResponse:
        current = pusher["current"]
        return JSONResponse({"url": current.url if current else None,
                             "signed": bool(current and current.secret),
                             "interval_s": current.interval_s if current else None})

    async def put_webhook(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest("webhook: must be a JSON object")
        url = body.get("url")
        if url is None:
            set_pusher(None)
        else:
            secret, interval = body.get("secret"), body.get("interval_s", 1.0)
            if not isinstance(url, str):
                raise _BadRequest("url: must be a string")
            if secret is not None and not isinstance(secret, str):
                raise _BadRequest("secret: must be a string")
            if isinstance(interval, bool) or not isinstance(interval, (int, float)):
                raise _BadRequest("interval_s: must be a number")
            set_pusher(TrackingPusher(state, url, secret, float(interval)))
        return await get_webhook(request)

    async def delete_faults(request: Request) -> JSONResponse:
        with state.lock:
            state.set_faults(FaultProfile())
        return JSONResponse(FaultProfile().to_json())

    async def bad_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, _BadRequest)
        return _error(exc.message, exc.status)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers unknown routes in plain text; clients here always expect JSON.
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/labels", buy_label, methods=["POST"]),
            Route("/v1/labels/batch", buy_batch, methods=["POST"]),
            Route("/v1/labels/lookup", lookup_labels, methods=["POST"]),
            Route("/v1/labels/by-key/{idempotency_key:path}", label_by_key, methods=["GET"]),
            Route("/v1/labels/{label_id}/void", void_label, methods=["POST"]),
            Route("/v1/tracking", track, methods=["POST"]),
            Route("/v1/rates", rates, methods=["GET"]),
            Route("/v1/stats", stats, methods=["GET"]),
            Route("/v1/reset", reset, methods=["POST"]),
            Route("/v1/admin/faults", get_faults, methods=["GET"]),
            Route("/v1/admin/faults", put_faults, methods=["PUT"]),
            Route("/v1/admin/faults", delete_faults, methods=["DELETE"]),
            Route("/v1/admin/webhook", get_webhook, methods=["GET"]),
            Route("/v1/admin/webhook", put_webhook, methods=["PUT"]),
            Route("/v2/shipments", ep_create_shipment, methods=["POST"]),
            Route("/v2/shipments/{shipment_id}", ep_get_shipment, methods=["GET"]),
            Route("/v2/shipments/{shipment_id}/buy", ep_buy_shipment, methods=["POST"]),
            Route("/v2/shipments/{shipment_id}/refund", ep_refund_shipment, methods=["POST"]),
            Route("/v2/batches/create_and_buy", ep_create_and_buy_batch, methods=["POST"]),
            Route("/v2/batches/{batch_id}", ep_get_batch, methods=["GET"]),
            Route("/v2/trackers/batch", ep_trackers_batch, methods=["POST"]),
        ],
        exception_handlers={_BadRequest: bad_request, HTTPException: http_error},
    )
    app.state.carrier = state  # for in-process inspection (tests, debugging)
    app.state.stop_pushing = lambda: set_pusher(None)
    return app


def _rates_for(carriers: Sequence[str], from_country: str, to_country: str,
               weight_g: int) -> list[dict[str, Any]]:
    zone = _zone(from_country, to_country)
    out = [
        {
            "carrier": carrier,
            "service": service,
            "rate": str(quote(carrier, service, from_country, to_country, weight_g)),
            "currency": CURRENCY,
            "est_delivery_days": _TARIFFS[(carrier, service, zone)].days,
        }
        for carrier in carriers
        if weight_g <= _MAX_WEIGHT_G[carrier]  # a carrier quotes only what it can carry
        for service in SERVICES[carrier]
    ]
    out.sort(key=lambda r: (Decimal(r["rate"]), r["carrier"], r["service"]))
    return out


def _uvicorn_config(app: Starlette, **kwargs: Any) -> uvicorn.Config:
    # A held ("lost") response must not delay shutdown for its whole hang.
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                          timeout_graceful_shutdown=1, **kwargs)


def serve(host: str, port: int, time_scale: float, seed: int = 0,
          faults: FaultProfile | None = None, easypost_api_key: str | None = None,
          **webhook: Any) -> None:
    """Run the sandbox carrier in the foreground until interrupted."""
    app = create_app(time_scale=time_scale, seed=seed, faults=faults,
                     easypost_api_key=easypost_api_key, **webhook)
    try:
        uvicorn.Server(_uvicorn_config(app, host=host, port=port)).run()
    finally:
        app.state.stop_pushing()


class SandboxCarrierServer(ThreadedServer):
    """The sandbox carrier under uvicorn in a background thread, for tests and demos.

    ``port=0`` binds a free port; read the address from ``url`` after ``start()``::

        with SandboxCarrierServer(time_scale=3600) as carrier:
            CarrierClient(carrier.url)...
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, time_scale: float = 1.0,
                 seed: int = 0, **app_options: Any) -> None:
        super().__init__(create_app(time_scale=time_scale, seed=seed, **app_options), host,
                         port, name="sandbox-carrier")

    @property
    def state(self) -> CarrierState:
        return self.app.state.carrier

    def stop(self, timeout_s: float = 5.0) -> None:
        self.app.state.stop_pushing()
        super().stop(timeout_s)


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """The fault-injection flags, shared by ``python -m sandbox.carrier`` and tools."""
    g = parser.add_argument_group("fault injection (all off by default)")
    g.add_argument("--latency-ms", type=float, default=0.0, help="delay every request")
    g.add_argument("--latency-jitter-ms", type=float, default=0.0, help="plus up to this much")
    g.add_argument("--error-rate", type=float, default=0.0, help="share answered 500/502/503")
    g.add_argument("--rate-limit-rate", type=float, default=0.0,
                   help="share answered 429 with Retry-After")
    g.add_argument("--retry-after-s", type=float, default=1.0, help="the 429s' Retry-After")
    g.add_argument("--timeout-rate", type=float, default=0.0,
                   help="share that hang for --hang-s, then 504 (not carried out)")
    g.add_argument("--lost-rate", type=float, default=0.0,
                   help="share carried out (charged) whose answer then hangs for --hang-s")
    g.add_argument("--hang-s", type=float, default=30.0,
                   help="how long timeouts and lost answers hang (above the client timeout)")
    g.add_argument("--fault-carriers", default="",
                   help="comma-separated carriers the faults apply to (default: all)")
    g.add_argument("--fault-operations", default="",
                   help=f"comma-separated operations the faults apply to, of {OPERATIONS} "
                        f"(default: all)")
    g.add_argument("--fault-seed", type=int, default=None, help="repeatable fault draws")


def faults_from_args(args: argparse.Namespace) -> FaultProfile:
    """Build (and validate) the fault profile the flags describe."""
    carriers = tuple(c.strip() for c in args.fault_carriers.split(",") if c.strip())
    operations = tuple(o.strip() for o in args.fault_operations.split(",") if o.strip())
    try:
        for c in carriers:
            _require_carrier(c)
        if any(op not in OPERATIONS for op in operations):
            raise _BadRequest(f"--fault-operations: must be of {list(OPERATIONS)}")
        profile = FaultProfile(
            latency_ms=args.latency_ms, latency_jitter_ms=args.latency_jitter_ms,
            error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate,
            retry_after_s=args.retry_after_s, timeout_rate=args.timeout_rate,
            lost_rate=args.lost_rate, hang_s=args.hang_s, carriers=carriers,
            operations=operations, seed=args.fault_seed)
        profile.validate()
    except _BadRequest as exc:
        raise SystemExit(f"invalid fault setting: {exc.message}") from None
    return profile


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the orderfleet sandbox carrier.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="carrier seconds per real second (3600 = one carrier hour per second)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--easypost-api-key", default=None,
                        help="the key the EasyPost dialect (/v2) accepts (default: any)")
    parser.add_argument("--webhook-url", default=None,
                        help="push tracking changes here, e.g. http://127.0.0.1:8080/webhooks/"
                             "tracking (orderfleet serve)")
    parser.add_argument("--webhook-secret", default=None, help="sign the pushes with this")
    parser.add_argument("--webhook-interval-s", type=float, default=1.0)
    add_fault_arguments(parser)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.time_scale, seed=args.seed, faults=faults_from_args(args),
          easypost_api_key=args.easypost_api_key, webhook_url=args.webhook_url,
          webhook_secret=args.webhook_secret, webhook_interval_s=args.webhook_interval_s)


if __name__ == "__main__":
    main()
