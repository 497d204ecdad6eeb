"""orderfleet's own carrier dialect (``/v1``): labels, batches, look-ups, voids, tracking, rates.

Label purchase is idempotent on ``idempotency_key``: a replay returns the same label and is not
charged again, so one label per shipment holds even when a worker retries.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.carrier.books import CarrierState, carrier_of
from sandbox.carrier.errors import BadRequest, json_body, json_error
from sandbox.carrier.faults import deliver, inject
from sandbox.carrier.tariffs import (
    CARRIERS,
    parse_label_request,
    rates_for,
    require_carrier,
    require_country,
)

MAX_BATCH_LABELS = 500
MAX_TRACKING_NUMBERS = 1000


class NativeApi:
    """The ``/v1`` carrier API over the carrier's books."""

    def __init__(self, state: CarrierState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        return [
            Route("/v1/labels", self.buy_label, methods=["POST"]),
            Route("/v1/labels/batch", self.buy_batch, methods=["POST"]),
            Route("/v1/labels/lookup", self.lookup_labels, methods=["POST"]),
            Route("/v1/labels/by-key/{idempotency_key:path}", self.label_by_key,
                  methods=["GET"]),
            Route("/v1/labels/{label_id}/void", self.void_label, methods=["POST"]),
            Route("/v1/tracking", self.track, methods=["POST"]),
            Route("/v1/rates", self.rates, methods=["GET"]),
        ]

    async def buy_label(self, request: Request) -> Response:
        body = await json_body(request)
        carrier = body.get("carrier") if isinstance(body, dict) else None
        fault, early = await inject(self.state,
                                    {carrier} if isinstance(carrier, str) else set(), "labels")
        if early is not None:
            return early
        with self.state.lock:
            try:
                req = parse_label_request(body)
            except BadRequest:
                self.state.stats.label_requests += 1
                self.state.stats.label_errors += 1
                raise
            label, replayed = self.state.buy(req)
            response = JSONResponse(label.to_json(replayed=replayed))
        return await deliver(self.state, fault, response, charged=0 if replayed else 1)

    async def buy_batch(self, request: Request) -> Response:
        body = await json_body(request)
        items = body.get("labels") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise BadRequest("labels: required, must be a list of label requests")
        if len(items) > MAX_BATCH_LABELS:
            raise BadRequest(f"labels: at most {MAX_BATCH_LABELS} per batch", status=413)
        carriers = {i.get("carrier") for i in items if isinstance(i, dict)} - {None}
        fault, early = await inject(self.state, {str(c) for c in carriers}, "labels")
        if early is not None:
            return early
        labels: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        with self.state.lock:
            self.state.stats.batch_requests += 1
            for index, item in enumerate(items):
                try:
                    req = parse_label_request(item)
                except BadRequest as exc:
                    self.state.stats.label_requests += 1
                    self.state.stats.label_errors += 1
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
                    label, replayed = self.state.buy(req)
                except BadRequest as exc:
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
        return await deliver(self.state, fault,
                             JSONResponse({"labels": labels, "errors": errors}), charged=charged)

    async def label_by_key(self, request: Request) -> Response:
        key = request.path_params["idempotency_key"]
        with self.state.lock:
            label = self.state.by_key.get(key)
        fault, early = await inject(self.state, {label.request.carrier} if label else set(),
                                    "lookup")
        if early is not None:
            return early
        with self.state.lock:
            self.state.stats.lookups += 1
            if label is None:
                return json_error("not found", 404)
            # A look-up is not a purchase: report it as the original, not a replay.
            response = JSONResponse(label.to_json(replayed=False))
        return await deliver(self.state, fault, response)

    async def lookup_labels(self, request: Request) -> Response:
        body = await json_body(request)
        keys = body.get("idempotency_keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BadRequest("idempotency_keys: required, must be a list of strings")
        if len(keys) > MAX_TRACKING_NUMBERS:
            raise BadRequest(f"idempotency_keys: at most {MAX_TRACKING_NUMBERS} per request",
                             status=413)
        with self.state.lock:
            found = [self.state.by_key[k] for k in keys if k in self.state.by_key]
        # A look-up of keys never bought is still about the carrier the caller names: during
        # that carrier's outage it must fail like any other call to it.
        asked = body.get("carrier")
        scope = {lb.request.carrier for lb in found}
        if isinstance(asked, str):
            scope.add(asked)
        fault, early = await inject(self.state, scope, "lookup")
        if early is not None:
            return early
        with self.state.lock:
            self.state.stats.lookups += 1
            found_keys = {lb.request.idempotency_key for lb in found}
            response = JSONResponse({"labels": [lb.to_json(replayed=False) for lb in found],
                                     "missing": [k for k in keys if k not in found_keys]})
        return await deliver(self.state, fault, response)

    async def void_label(self, request: Request) -> Response:
        label_id = request.path_params["label_id"]
        with self.state.lock:
            label = self.state.by_id.get(label_id)
        fault, early = await inject(self.state, {label.request.carrier} if label else set(),
                                    "void")
        if early is not None:
            return early
        with self.state.lock:
            if label is None:
                return json_error("not found", 404)
            self.state.void(label)
        return await deliver(self.state, fault,
                             JSONResponse({"label_id": label_id, "voided": True}))

    async def track(self, request: Request) -> Response:
        body = await json_body(request)
        numbers = body.get("tracking_numbers") if isinstance(body, dict) else None
        if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
            raise BadRequest("tracking_numbers: required, must be a list of strings")
        if len(numbers) > MAX_TRACKING_NUMBERS:
            raise BadRequest(
                f"tracking_numbers: at most {MAX_TRACKING_NUMBERS} per request", status=413
            )
        fault, early = await inject(self.state, {carrier_of(n) for n in numbers}, "tracking")
        if early is not None:
            return early
        with self.state.lock:
            self.state.stats.tracking_requests += 1
            now = self.state.clock()
            trackers = [self.state.tracker(n, now) for n in numbers]
        return await deliver(self.state, fault, JSONResponse({"trackers": trackers}))

    async def rates(self, request: Request) -> Response:
        params = request.query_params
        carriers = [require_carrier(params["carrier"])] if params.get("carrier") else CARRIERS
        from_country = require_country(params, "from_country")
        to_country = require_country(params, "to_country")
        try:
            weight_g = int(params.get("weight_g", ""))
        except ValueError:
            raise BadRequest("weight_g: must be a positive integer (grams)") from None
        if weight_g < 1:
            raise BadRequest("weight_g: must be a positive integer (grams)")
        fault, early = await inject(self.state, set(carriers), "rates")
        if early is not None:
            return early
        out = rates_for(carriers, from_country, to_country, weight_g)
        return await deliver(self.state, fault, JSONResponse({"rates": out}))
