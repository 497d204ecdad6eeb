"""A sandbox shipping carrier: a real HTTP server that stands in for a carrier API.

It serves two carriers, ``sbx-post`` (economical, domestic-oriented) and ``sbx-air`` (express,
international), and behaves like a real carrier where it matters to the pipeline:

* label purchase is idempotent on ``idempotency_key`` (a replay returns the same label and is
  not charged again), so one label per shipment holds even when a worker retries;
* tracking progresses with time; ``time_scale`` speeds carrier time up so a demo or a test sees
  a parcel delivered in seconds instead of days;
* ``/v1/stats`` counts what was charged, so tests can prove exactly-one-label-per-shipment.

State lives in memory (one process, guarded by a lock). Run it with
``python -m workers.sandbox_carrier --port 8765 --time-scale 3600``, or in-process with
:class:`SandboxCarrierServer` (tests) or :func:`serve`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CARRIERS: tuple[str, ...] = ("sbx-post", "sbx-air")
TRACKING_STATUSES: tuple[str, ...] = (
    "info_received",
    "in_transit",
    "out_for_delivery",
    "failed_attempt",
    "delivered",
    "exception",
    "expired",
)
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


@dataclass
class _Stats:
    labels_purchased: int = 0  # unique labels charged
    label_requests: int = 0  # every label item received, single or in a batch
    replays: int = 0
    label_errors: int = 0
    labels_voided: int = 0
    batch_requests: int = 0
    tracking_requests: int = 0


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
    # Not reset by reset(): numbers stay unique for the server's whole life, so a client that
    # kept an old tracking number never sees it reused for someone else's parcel.
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def reset(self) -> None:
        with self.lock:
            self.by_id.clear()
            self.by_key.clear()
            self.by_tracking.clear()
            self.stats = _Stats()

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
        self.by_key[req.idempotency_key] = label
        self.by_tracking[tracking_number] = label
        self.stats.labels_purchased += 1
        return label, False

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


def create_app(
    time_scale: float = 1.0,
    seed: int = 0,
    *,
    failed_attempt_rate: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the sandbox carrier.

    ``time_scale`` is carrier seconds per real second (3600: one carrier hour per second).
    ``seed`` makes tracking numbers and label ids reproducible. ``failed_attempt_rate`` (0..1)
    is the share of parcels that miss their first delivery round (off by default, so a parcel's
    timeline is exactly the documented one). ``clock`` (epoch seconds) is injectable for tests.
    """
    if not time_scale > 0:
        raise ValueError("time_scale must be positive")
    if not 0.0 <= failed_attempt_rate <= 1.0:
        raise ValueError("failed_attempt_rate must be within 0..1")
    state = CarrierState(
        time_scale=time_scale, seed=seed, failed_attempt_rate=failed_attempt_rate, clock=clock
    )

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def buy_label(request: Request) -> JSONResponse:
        body = await _json_body(request)
        with state.lock:
            try:
                req = _parse_label_request(body)
            except _BadRequest:
                state.stats.label_requests += 1
                state.stats.label_errors += 1
                raise
            label, replayed = state.buy(req)
            return JSONResponse(label.to_json(replayed=replayed))

    async def buy_batch(request: Request) -> JSONResponse:
        body = await _json_body(request)
        items = body.get("labels") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise _BadRequest("labels: required, must be a list of label requests")
        if len(items) > MAX_BATCH_LABELS:
            raise _BadRequest(f"labels: at most {MAX_BATCH_LABELS} per batch", status=413)
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
        return JSONResponse({"labels": labels, "errors": errors})

    async def label_by_key(request: Request) -> JSONResponse:
        key = request.path_params["idempotency_key"]
        with state.lock:
            label = state.by_key.get(key)
            if label is None:
                return _error("not found", 404)
            # A look-up is not a purchase: report it as the original, not a replay.
            return JSONResponse(label.to_json(replayed=False))

    async def void_label(request: Request) -> JSONResponse:
        label_id = request.path_params["label_id"]
        with state.lock:
            label = state.by_id.get(label_id)
            if label is None:
                return _error("not found", 404)
            if label.voided_ts is None:  # voiding twice is a no-op, not an error
                label.voided_ts = state.clock()
                state.stats.labels_voided += 1
            return JSONResponse({"label_id": label_id, "voided": True})

    async def track(request: Request) -> JSONResponse:
        body = await _json_body(request)
        numbers = body.get("tracking_numbers") if isinstance(body, dict) else None
        if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
            raise _BadRequest("tracking_numbers: required, must be a list of strings")
        if len(numbers) > MAX_TRACKING_NUMBERS:
            raise _BadRequest(
                f"tracking_numbers: at most {MAX_TRACKING_NUMBERS} per request", status=413
            )
        with state.lock:
            state.stats.tracking_requests += 1
            now = state.clock()
            trackers = [state.tracker(n, now) for n in numbers]
        return JSONResponse({"trackers": trackers})

    async def rates(request: Request) -> JSONResponse:
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
        return JSONResponse({"rates": out})

    async def stats(request: Request) -> JSONResponse:
        with state.lock:
            return JSONResponse(dict(vars(state.stats)))

    async def reset(request: Request) -> JSONResponse:
        state.reset()
        return JSONResponse({"ok": True})

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
            Route("/v1/labels/by-key/{idempotency_key:path}", label_by_key, methods=["GET"]),
            Route("/v1/labels/{label_id}/void", void_label, methods=["POST"]),
            Route("/v1/tracking", track, methods=["POST"]),
            Route("/v1/rates", rates, methods=["GET"]),
            Route("/v1/stats", stats, methods=["GET"]),
            Route("/v1/reset", reset, methods=["POST"]),
        ],
        exception_handlers={_BadRequest: bad_request, HTTPException: http_error},
    )
    app.state.carrier = state  # for in-process inspection (tests, debugging)
    return app


def serve(host: str, port: int, time_scale: float, seed: int = 0) -> None:
    """Run the sandbox carrier in the foreground until interrupted."""
    uvicorn.run(
        create_app(time_scale=time_scale, seed=seed),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


class SandboxCarrierServer:
    """The sandbox carrier under uvicorn in a background thread, for tests and demos.

    ``port=0`` binds a free port; read the address from ``url`` after ``start()``::

        with SandboxCarrierServer(time_scale=3600) as carrier:
            CarrierClient(carrier.url)...
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
        seed: int = 0,
        **app_options: Any,
    ) -> None:
        self.app = create_app(time_scale=time_scale, seed=seed, **app_options)
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.url = ""

    @property
    def state(self) -> CarrierState:
        return self.app.state.carrier

    def start(self, timeout_s: float = 10.0) -> str:
        # Bind the socket ourselves: with port 0 the OS picks a free port and there is no race
        # between "find a free port" and "bind it". proto must be IPPROTO_TCP, not 0: asyncio
        # sets TCP_NODELAY only on sockets that say so, and without it every keep-alive
        # response waits ~40 ms (Nagle vs delayed ACK).
        ipv6 = ":" in self._host
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._socket = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ipv6 else f"http://{host}:{port}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"sandbox-carrier-{port}",
            daemon=True,
        )
        self._thread.start()
        self._wait_healthy(timeout_s)
        return self.url

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not (self._thread and self._thread.is_alive()):
                self.stop()
                raise RuntimeError(f"sandbox carrier did not become healthy at {self.url}")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> SandboxCarrierServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.time_scale, seed=args.seed)


if __name__ == "__main__":
    main()
