"""The sandbox carrier's books: labels sold, where each parcel is, and what was charged.

State lives in memory (one process, guarded by one lock). A label's tracking is a timeline
computed from its creation time and the carrier's ``time_scale``, so a demo or a test sees a
parcel delivered in seconds instead of days.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sandbox.carrier.errors import BadRequest
from sandbox.carrier.faults import FaultProfile
from sandbox.carrier.tariffs import CURRENCY, LabelRequest, quote

_TRACKING_PREFIX = {"sbx-post": "SBXP", "sbx-air": "SBXA"}
_CARRIER_BY_PREFIX = {prefix: carrier for carrier, prefix in _TRACKING_PREFIX.items()}

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


def carrier_of(tracking_number: str) -> str:
    """The carrier whose tracking numbers look like this one, or "" for a stranger's."""
    return _CARRIER_BY_PREFIX.get(tracking_number[:4], "")


def iso(ts: float) -> str:
    """Epoch seconds as the carrier writes times: ISO 8601, milliseconds, ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Label:
    """A label the carrier sold."""

    request: LabelRequest
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
            "created_at": iso(self.created_ts),
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


def _milestones(label: Label) -> list[_Milestone]:
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


@dataclass
class _Stats:
    """What the carrier did, for tests and benchmarks (``GET /v1/stats``)."""

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
    by_id: dict[str, Label] = field(default_factory=dict)
    by_key: dict[str, Label] = field(default_factory=dict)
    by_tracking: dict[str, Label] = field(default_factory=dict)
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

    def issue(self, req: LabelRequest, *, keyed: bool = True) -> Label:
        """Charge a new label. Caller holds the lock. ``keyed``: remember it by its key."""
        tracking_number = self._new_tracking_number(req.carrier)
        draw = zlib.crc32(f"{self.seed}:{tracking_number}".encode()) % 10_000
        label = Label(
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

    def buy(self, req: LabelRequest) -> tuple[Label, bool]:
        """Return (label, replayed). Caller holds the lock."""
        self.stats.label_requests += 1
        existing = self.by_key.get(req.idempotency_key)
        if existing is not None:
            # Same key, different parcel: almost certainly a client bug; refusing it is safer
            # than handing back a label for another address.
            if existing.request != req:
                self.stats.label_errors += 1
                raise BadRequest(
                    "idempotency_key: already used for a different label request", status=409
                )
            self.stats.replays += 1
            return existing, True
        return self.issue(req), False

    def void(self, label: Label) -> None:
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
                "at": iso(label.created_ts + m.hours / hours_per_second),
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
                    "at": iso(label.voided_ts),
                    "location": events[-1]["location"] if events else "",
                    "message": "label voided",
                }
            )
        for n, event in enumerate(events, start=1):
            event["id"] = f"{tracking_number}-{n}"
        status = events[-1]["status"] if events else "info_received"
        return {"tracking_number": tracking_number, "status": status, "events": events}
