"""The EasyPost dialect (``/v2``): shipments, rates, buy, refund, batches, trackers.

Enough of EasyPost's REST API, in its own shapes and error codes, for orderfleet's EasyPost
adapter to be tested against a real server: HTTP Basic with the API key as user, shipments
created with rates and bought by rate id (never de-duplicated, as at EasyPost), batch purchase
answered before the labels are visible, and trackers in EasyPost's statuses.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from domain.carriers.statuses import to_easypost_status
from sandbox.carrier.books import CarrierState, carrier_of, iso
from sandbox.carrier.errors import BadRequest, json_body
from sandbox.carrier.faults import deliver, inject
from sandbox.carrier.tariffs import (
    CARRIERS,
    COUNTRY_RE,
    MAX_TEXT,
    LabelRequest,
    rates_for,
    require_carrier,
)

_GRAMS_PER_OUNCE = 28.349523125


def _error(code: str, message: str, status: int, field_name: str | None = None) -> JSONResponse:
    err: dict[str, Any] = {"code": code, "message": message, "errors": []}
    if field_name:
        err["errors"] = [{"field": field_name, "message": message}]
    return JSONResponse({"error": err}, status_code=status)


class _InvalidField(Exception):
    """A shipment field EasyPost would refuse (answered as ``errors: [{field, message}]``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name, self.message = field_name, message


def _country(addr: Any, name: str) -> str:
    country = addr.get("country") if isinstance(addr, dict) else None
    if not isinstance(country, str) or not COUNTRY_RE.match(country):
        raise _InvalidField(f"{name}.country", "must be an ISO 3166-1 alpha-2 code")
    return country


def _parse_shipment(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _InvalidField("shipment", "must be an object")
    to_country = _country(body.get("to_address"), "shipment.to_address")
    from_country = _country(body.get("from_address"), "shipment.from_address")
    parcel = body.get("parcel")
    weight = parcel.get("weight") if isinstance(parcel, dict) else None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise _InvalidField("shipment.parcel.weight", "must be a positive number of ounces")
    reference = body.get("reference")
    if reference is not None and (not isinstance(reference, str) or len(reference) > MAX_TEXT):
        raise _InvalidField("shipment.reference", "must be a string")
    carrier, service = body.get("carrier"), body.get("service")
    if (carrier is None) != (service is None):
        raise _InvalidField("shipment.service", "carrier and service go together")
    postal = str((body.get("to_address") or {}).get("zip", ""))
    return {
        "to_address": body["to_address"], "from_address": body["from_address"],
        "to_country": to_country, "from_country": from_country,
        "weight_g": max(1, math.ceil(float(weight) * _GRAMS_PER_OUNCE)),
        "weight_oz": float(weight), "reference": reference, "carrier": carrier,
        "service": service, "to_postal_code": postal,
    }


def _location(location: str) -> dict[str, Any]:
    parts = [p.strip() for p in location.split(",")] if location else []
    country = parts[-1] if parts and COUNTRY_RE.match(parts[-1]) else None
    return {"object": "TrackingLocation", "city": parts[0] if parts else None,
            "state": parts[1] if len(parts) == 3 else None, "country": country, "zip": None}


def _public(shipment: dict[str, Any]) -> dict[str, Any]:
    """A shipment as the API shows it (without the sandbox's own bookkeeping)."""
    return {k: v for k, v in shipment.items() if not k.startswith("_")}


class EasyPostApi:
    """The ``/v2`` API over the carrier's books; only ``api_key`` is accepted (any when None)."""

    def __init__(self, state: CarrierState, api_key: str | None = None) -> None:
        self.state, self.api_key = state, api_key

    def routes(self) -> list[Route]:
        return [
            Route("/v2/shipments", self.create_shipment, methods=["POST"]),
            Route("/v2/shipments/{shipment_id}", self.get_shipment, methods=["GET"]),
            Route("/v2/shipments/{shipment_id}/buy", self.buy_shipment, methods=["POST"]),
            Route("/v2/shipments/{shipment_id}/refund", self.refund_shipment, methods=["POST"]),
            Route("/v2/batches/create_and_buy", self.create_and_buy_batch, methods=["POST"]),
            Route("/v2/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v2/trackers/batch", self.trackers_batch, methods=["POST"]),
        ]

    def _authorised(self, request: Request) -> JSONResponse | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return _error("APIKEY.REQUIRED", "an API key is required (HTTP Basic)", 401)
        try:
            user = base64.b64decode(header[6:]).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return _error("APIKEY.INVALID", "malformed Authorization header", 401)
        if not user or (self.api_key is not None and user != self.api_key):
            return _error("APIKEY.INVALID", "the API key is not valid", 401)
        return None

    def _rates(self, shp_id: str, parsed: dict[str, Any]) -> list[dict[str, Any]]:
        """Caller holds the lock."""
        return [
            {"id": self.state.new_object_id("rate"), "object": "Rate", "shipment_id": shp_id,
             "carrier": r["carrier"], "service": r["service"], "rate": r["rate"],
             "currency": r["currency"], "delivery_days": r["est_delivery_days"],
             "est_delivery_days": r["est_delivery_days"]}
            for r in rates_for(CARRIERS, parsed["from_country"], parsed["to_country"],
                               parsed["weight_g"])
        ]

    def _create(self, parsed: dict[str, Any]) -> dict[str, Any]:
        """Create (and, with carrier + service, buy) a shipment. Caller holds the lock."""
        shp_id = self.state.new_object_id("shp")
        now = iso(self.state.clock())
        shipment: dict[str, Any] = {
            "id": shp_id, "object": "Shipment", "mode": "test",
            "reference": parsed["reference"], "created_at": now, "updated_at": now,
            "to_address": parsed["to_address"], "from_address": parsed["from_address"],
            "parcel": {"object": "Parcel", "weight": parsed["weight_oz"]},
            "rates": self._rates(shp_id, parsed), "selected_rate": None, "postage_label": None,
            "tracking_code": None, "refund_status": None, "status": "unknown",
            "_parsed": parsed, "_label": None,
        }
        self.state.ep_shipments[shp_id] = shipment
        if parsed["reference"]:
            self.state.ep_by_reference.setdefault(parsed["reference"], []).append(shp_id)
        if parsed["carrier"] is not None:
            rate = next((r for r in shipment["rates"] if r["carrier"] == parsed["carrier"]
                         and r["service"] == parsed["service"]), None)
            if rate is None:
                raise _InvalidField("shipment.service",
                                    f"no rate for {parsed['carrier']} {parsed['service']}")
            self._buy(shipment, rate)
        return shipment

    def _buy(self, shipment: dict[str, Any], rate: dict[str, Any]) -> None:
        """Charge a label for the shipment (never de-duplicated, as at EasyPost)."""
        parsed = shipment["_parsed"]
        req = LabelRequest(parsed["reference"] or shipment["id"], rate["carrier"],
                           rate["service"], parsed["from_country"], parsed["to_country"],
                            parsed["to_postal_code"], parsed["weight_g"],
                            parsed["reference"] or "")
        self.state.stats.label_requests += 1
        label = self.state.issue(req, keyed=False)
        shipment.update({
            "selected_rate": rate, "tracking_code": label.tracking_number,
            "postage_label": {"object": "PostageLabel",
                              "id": "pl_" + label.label_id.removeprefix("LBL-").lower(),
                              "label_date": iso(label.created_ts),
                              "label_url": f"/v2/labels/{label.label_id}.png"},
            "updated_at": iso(self.state.clock()), "_label": label,
        })

    def _find(self, id_or_reference: str) -> dict[str, Any] | None:
        """By id, or by reference (the purchased one first, as EasyPost allows). Locked."""
        if id_or_reference in self.state.ep_shipments:
            return self.state.ep_shipments[id_or_reference]
        ids = self.state.ep_by_reference.get(id_or_reference, [])
        shipments = [self.state.ep_shipments[i] for i in ids]
        bought = [s for s in shipments if s["_label"] is not None]
        candidates = bought or shipments
        return candidates[-1] if candidates else None

    async def create_shipment(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        body = await json_body(request)
        inner = body.get("shipment") if isinstance(body, dict) else None
        carrier = inner.get("carrier") if isinstance(inner, dict) else None
        fault, early = await inject(self.state, {carrier} if isinstance(carrier, str)
                                    else set(CARRIERS),
                                    "labels" if isinstance(carrier, str) else "rates")
        if early is not None:
            return early
        with self.state.lock:
            try:
                parsed = _parse_shipment(inner)
                if parsed["carrier"] is not None:
                    require_carrier(parsed["carrier"])
                shipment = self._create(parsed)
            except _InvalidField as exc:
                self.state.stats.label_errors += 1
                return _error("SHIPMENT.INVALID_PARAMS", exc.message, 422, exc.field_name)
            except BadRequest as exc:
                return _error("SHIPMENT.INVALID_PARAMS", exc.message, 422, "shipment.carrier")
            response = JSONResponse(_public(shipment), status_code=201)
        return await deliver(self.state, fault, response,
                             charged=int(shipment["_label"] is not None))

    async def get_shipment(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        with self.state.lock:
            shipment = self._find(request.path_params["shipment_id"])
        carrier = (shipment or {}).get("selected_rate") or {}
        fault, early = await inject(self.state, {carrier["carrier"]} if carrier else set(),
                                    "lookup")
        if early is not None:
            return early
        with self.state.lock:
            self.state.stats.lookups += 1
            if shipment is None:
                return _error("NOT_FOUND", "The requested resource could not be found.", 404)
            response = JSONResponse(_public(shipment))
        return await deliver(self.state, fault, response)

    async def buy_shipment(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        body = await json_body(request)
        rate_id = ((body or {}).get("rate") or {}).get("id") if isinstance(body, dict) else None
        with self.state.lock:
            shipment = self.state.ep_shipments.get(request.path_params["shipment_id"])
        if shipment is None:
            return _error("NOT_FOUND", "The requested resource could not be found.", 404)
        rate = next((r for r in shipment["rates"] if r["id"] == rate_id), None)
        fault, early = await inject(self.state, {rate["carrier"]} if rate else set(), "labels")
        if early is not None:
            return early
        with self.state.lock:
            if shipment["_label"] is not None:
                return _error("SHIPMENT.POSTAGE.EXISTS",
                              "this shipment already has postage", 422)
            if rate is None:
                return _error("SHIPMENT.RATE.INVALID", "rate.id: not a rate of this shipment",
                              422, "rate.id")
            self._buy(shipment, rate)
            response = JSONResponse(_public(shipment))
        return await deliver(self.state, fault, response, charged=1)

    async def refund_shipment(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        with self.state.lock:
            shipment = self.state.ep_shipments.get(request.path_params["shipment_id"])
        label = shipment["_label"] if shipment else None
        fault, early = await inject(self.state, {label.request.carrier} if label else set(),
                                    "void")
        if early is not None:
            return early
        with self.state.lock:
            if shipment is None:
                return _error("NOT_FOUND", "The requested resource could not be found.", 404)
            if label is None:
                return _error("SHIPMENT.REFUND.INVALID", "the shipment has no postage", 422)
            self.state.void(label)
            shipment["refund_status"] = "submitted"
            response = JSONResponse(_public(shipment))
        return await deliver(self.state, fault, response)

    async def create_and_buy_batch(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        body = await json_body(request)
        batch_in = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch_in, dict):
            batch_in = {}
        defs = batch_in.get("shipments")
        if not isinstance(defs, list):
            return _error("BATCH.INVALID_PARAMS", "batch.shipments: must be a list", 422,
                          "batch.shipments")
        carriers = {d.get("carrier") for d in defs if isinstance(d, dict)} - {None}
        fault, early = await inject(self.state, {str(c) for c in carriers}, "labels")
        if early is not None:
            return early
        with self.state.lock:
            self.state.stats.batch_requests += 1
            batch_id = self.state.new_object_id("batch")
            entries = []
            for d in defs:
                reference = d.get("reference") if isinstance(d, dict) else None
                try:
                    parsed = _parse_shipment(d)
                    if parsed["carrier"] is None:
                        raise _InvalidField("shipment.carrier", "required in a batch purchase")
                    require_carrier(parsed["carrier"])
                    shipment = self._create(parsed)
                except (_InvalidField, BadRequest) as exc:
                    self.state.stats.label_errors += 1
                    entries.append({"id": None, "reference": reference,
                                    "batch_status": "postage_purchase_failed",
                                    "batch_message": str(exc), "tracking_code": None})
                    continue
                entries.append({"id": shipment["id"], "reference": reference,
                                "batch_status": "postage_purchased", "batch_message": None,
                                "tracking_code": shipment["tracking_code"]})
            now = iso(self.state.clock())
            counts = {s: sum(e["batch_status"] == s for e in entries)
                      for s in ("postage_purchased", "postage_purchase_failed")}
            self.state.ep_batches[batch_id] = {
                "id": batch_id, "object": "Batch", "mode": "test", "state": "purchased",
                "num_shipments": len(entries), "reference": batch_in.get("reference"),
                "shipments": entries, "status": counts, "created_at": now, "updated_at": now,
                "label_url": None,
            }
            # Like EasyPost, the answer comes before the (asynchronous) purchase is visible.
            response = JSONResponse({**self.state.ep_batches[batch_id], "state": "creating",
                                     "shipments": []})
        return await deliver(self.state, fault, response, charged=counts["postage_purchased"])

    async def get_batch(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        fault, early = await inject(self.state, set(CARRIERS), "lookup")
        if early is not None:
            return early
        with self.state.lock:
            batch = self.state.ep_batches.get(request.path_params["batch_id"])
            if batch is None:
                return _error("NOT_FOUND", "The requested resource could not be found.", 404)
            response = JSONResponse(batch)
        return await deliver(self.state, fault, response)

    async def trackers_batch(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        body = await json_body(request)
        codes = body.get("tracking_codes") if isinstance(body, dict) else None
        if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
            return _error("TRACKER.INVALID_PARAMS", "tracking_codes: must be a list of "
                          "strings", 422, "tracking_codes")
        fault, early = await inject(self.state, {carrier_of(c) for c in codes}, "tracking")
        if early is not None:
            return early
        with self.state.lock:
            self.state.stats.tracking_requests += 1
            now = self.state.clock()
            out = []
            for code in codes:
                if code not in self.state.by_tracking:
                    continue
                ours = self.state.tracker(code, now)
                status, detail = to_easypost_status(ours["status"])
                label = self.state.by_tracking[code]
                out.append({
                    "id": "trk_" + code.lower(), "object": "Tracker", "mode": "test",
                    "tracking_code": code, "status": status, "status_detail": detail,
                    "carrier": label.request.carrier,
                    "tracking_details": [
                        {"object": "TrackingDetail", "message": e["message"],
                         "status": to_easypost_status(e["status"])[0],
                         "status_detail": to_easypost_status(e["status"])[1],
                         "datetime": e["at"], "source": label.request.carrier,
                         "tracking_location": _location(e["location"])}
                        for e in ours["events"]
                    ],
                })
            response = JSONResponse({"trackers": out, "has_more": False})
        return await deliver(self.state, fault, response)
