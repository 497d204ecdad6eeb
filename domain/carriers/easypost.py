"""An adapter shaped like EasyPost's REST API (``/v2``): shipments, rates, buy, batches,
trackers. A store plugs a real account in by configuration (``ORDERFLEET_CARRIER_API=easypost``,
``ORDERFLEET_CARRIER_URL=https://api.easypost.com``, ``ORDERFLEET_CARRIER_API_KEY=...``); the
sandbox carrier speaks the same dialect, so the adapter is tested against a real server.

EasyPost does not de-duplicate purchases: buying twice charges twice. Exactly-once therefore
rests on two things here. A purchase is never retried when the carrier might have acted (a
timeout, a 5xx); the caller gets ``CarrierUnavailable(outcome_unknown=True)`` instead. And
every shipment is created with ``reference`` = our idempotency key, which EasyPost accepts in
place of the shipment id, so ``find_label(key)`` looks the purchase up before anyone retries.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from domain.carriers.base import (
    BatchResult,
    CarrierAdapter,
    CarrierRejected,
    CarrierUnavailable,
    HttpTransport,
    Label,
    LabelRequest,
    Rate,
    Tracker,
    TrackingEvent,
    carrier_chunks,
    chunks,
    parse_time,
)
from domain.carriers.statuses import normalize_status

if TYPE_CHECKING:
    from domain.breaker import CircuitBreaker

GRAMS_PER_OUNCE = 28.349523125
MAX_BATCH_SHIPMENTS = 500  # EasyPost advises under 1,000 per batch
MAX_TRACKERS = 100
_BATCH_DONE = frozenset({"purchased", "purchase_failed", "label_generated", "label_generating"})
_BATCH_POLL_S = 0.2
_REFUNDED = frozenset({"submitted", "refunded"})


def ounces(weight_g: int) -> float:
    """EasyPost weighs parcels in ounces; round up to 0.1 oz so a label never under-declares."""
    return math.ceil(weight_g / GRAMS_PER_OUNCE * 10) / 10


def _address(addr: Mapping[str, str] | None, country: str, postal_code: str = "") -> dict[str, str]:
    """Our address fields under EasyPost's names (street1, state, zip...)."""
    a = dict(addr or {})
    out = {
        "name": a.get("name", ""),
        "company": a.get("company", ""),
        "street1": a.get("line1", a.get("street1", "")),
        "street2": a.get("line2", a.get("street2", "")),
        "city": a.get("city", ""),
        "state": a.get("region", a.get("state", "")),
        "zip": a.get("postal_code", a.get("zip", postal_code)),
        "country": a.get("country", country) or country,
        "phone": a.get("phone", ""),
    }
    return {k: v for k, v in out.items() if v}


class EasyPostCarrier(CarrierAdapter):
    """Client of an EasyPost-shaped API."""

    name = "easypost"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout_s: float = 10.0,
        retry_max_s: float = 30.0,
        *,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("carrier_api_key: required for the EasyPost adapter")
        self.base_url = base_url.rstrip("/")
        self.retry_max_s = retry_max_s
        # EasyPost authenticates with HTTP Basic: the API key as user name, no password.
        self.transport = HttpTransport(self.base_url, timeout_s=timeout_s,
                                       retry_max_s=retry_max_s, auth=(api_key, ""),
                                       breaker=breaker)

    # -- wire format ---------------------------------------------------------------------------

    @staticmethod
    def shipment_body(item: LabelRequest, *, buy: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "reference": item.idempotency_key,
            "to_address": _address(item.to_address, item.to_country, item.to_postal_code),
            "from_address": _address(item.from_address, item.from_country),
            "parcel": {"weight": ounces(item.weight_g)},
            "options": {"print_custom_1": item.reference[:35]} if item.reference else {},
        }
        if buy:  # one-call buy: naming carrier and service purchases at creation
            body["carrier"] = item.carrier
            body["service"] = item.service
        return body

    @staticmethod
    def label_of(shipment: dict[str, Any], *, replayed: bool = False) -> Label | None:
        """The label of a purchased shipment; None when it is unbought or refunded."""
        postage = shipment.get("postage_label")
        rate = shipment.get("selected_rate")
        if not postage or not rate or shipment.get("refund_status") in _REFUNDED:
            return None
        return Label(
            idempotency_key=shipment["reference"],
            label_id=shipment["id"],  # refunds are per shipment in EasyPost
            tracking_number=shipment["tracking_code"],
            carrier=rate["carrier"],
            service=rate["service"],
            rate=Decimal(str(rate["rate"])),
            currency=rate.get("currency", "USD"),
            created_at=parse_time(postage.get("label_date") or shipment["created_at"]),
            replayed=replayed,
        )

    # -- labels --------------------------------------------------------------------------------

    def buy_label(self, item: LabelRequest) -> Label:
        shipment = self.transport.call(
            "POST", "/v2/shipments", json={"shipment": self.shipment_body(item, buy=True)},
            circuit=item.carrier, idempotent=False)
        label = self.label_of(shipment)
        if label is None:
            raise CarrierRejected(422, f"shipment {shipment.get('id')} came back without a label")
        return label

    def buy_labels(self, items: Sequence[LabelRequest]) -> BatchResult:
        """``POST /v2/batches/create_and_buy`` per carrier and 500 shipments, then poll."""
        labels: list[Label] = []
        errors: dict[str, str] = {}
        for carrier, chunk in carrier_chunks(items, MAX_BATCH_SHIPMENTS):
            self._buy_batch(carrier, chunk, labels, errors)
        order = {item.idempotency_key: n for n, item in enumerate(items)}
        labels.sort(key=lambda label: order.get(label.idempotency_key, len(order)))
        return BatchResult(labels=labels, errors=errors)

    def _buy_batch(self, carrier: str, chunk: Sequence[LabelRequest], labels: list[Label],
                   errors: dict[str, str]) -> None:
        batch = self.transport.call(
            "POST", "/v2/batches/create_and_buy",
            json={"batch": {"shipments": [self.shipment_body(i, buy=True) for i in chunk]}},
            circuit=carrier, idempotent=False)
        deadline = time.monotonic() + self.retry_max_s
        # Batches are asynchronous at EasyPost: poll until the purchase has run.
        while batch.get("state") not in _BATCH_DONE:
            if time.monotonic() > deadline:
                raise CarrierUnavailable(
                    f"batch {batch.get('id')} still {batch.get('state')} after "
                    f"{self.retry_max_s:.0f}s", outcome_unknown=True)
            time.sleep(_BATCH_POLL_S)
            batch = self.transport.call("GET", f"/v2/batches/{quote(batch['id'], safe='')}",
                                        circuit=carrier)
        for entry in batch.get("shipments", []):
            reference = entry.get("reference") or entry.get("id", "?")
            if entry.get("batch_status") != "postage_purchased":
                errors[reference] = entry.get("batch_message") or entry.get("batch_status", "")
                continue
            shipment = self.transport.call(
                "GET", f"/v2/shipments/{quote(entry['id'], safe='')}", circuit=carrier)
            label = self.label_of(shipment)
            if label is None:
                errors[reference] = "purchased shipment came back without a label"
            else:
                labels.append(label)

    def find_label(self, idempotency_key: str, carrier: str | None = None) -> Label | None:
        # EasyPost accepts a shipment's reference in place of its id.
        shipment = self.transport.call(
            "GET", f"/v2/shipments/{quote(idempotency_key, safe='')}", not_found_ok=True,
            circuit=carrier or self.name)
        return None if shipment is None else self.label_of(shipment, replayed=True)

    def void_label(self, label_id: str, carrier: str | None = None) -> None:
        self.transport.call("POST", f"/v2/shipments/{quote(label_id, safe='')}/refund",
                            circuit=carrier or self.name)

    # -- tracking and rates --------------------------------------------------------------------

    def track(self, tracking_numbers: Sequence[str], carrier: str | None = None) -> list[Tracker]:
        by_code: dict[str, Tracker] = {}
        for chunk in chunks(list(tracking_numbers), MAX_TRACKERS):
            body = self.transport.call("POST", "/v2/trackers/batch",
                                       json={"tracking_codes": list(chunk)},
                                       circuit=carrier or self.name)
            for raw in body.get("trackers", []):
                tracker = tracker_from_easypost(raw)
                by_code[tracker.tracking_number] = tracker
        return [by_code.get(n) or Tracker(n, "unknown", []) for n in tracking_numbers]

    def rates(
        self, from_country: str, to_country: str, weight_g: int, carrier: str | None = None
    ) -> list[Rate]:
        # Rating creates an unbought shipment (free at EasyPost), so retrying is harmless.
        body = {"shipment": {"to_address": {"country": to_country},
                             "from_address": {"country": from_country},
                             "parcel": {"weight": ounces(weight_g)}}}
        shipment = self.transport.call("POST", "/v2/shipments", json=body,
                                       circuit=carrier or self.name)
        out = [
            Rate(carrier=r["carrier"], service=r["service"], rate=Decimal(str(r["rate"])),
                 currency=r.get("currency", "USD"),
                 est_delivery_days=int(r.get("delivery_days") or r.get("est_delivery_days")))
            for r in shipment.get("rates", [])
            if carrier is None or r["carrier"] == carrier
        ]
        return sorted(out, key=lambda r: (r.rate, r.carrier, r.service))

    def close(self) -> None:
        self.transport.close()


def tracker_from_easypost(raw: Mapping[str, Any]) -> Tracker:
    """An EasyPost Tracker object, statuses normalised. Raises UnknownTrackingStatus/KeyError
    naming what is wrong in a malformed one."""
    code = raw["tracking_code"]
    events = []
    for detail in raw.get("tracking_details") or []:
        status = normalize_status(detail["status"], detail.get("status_detail"))
        if status is None:
            continue
        loc = detail.get("tracking_location") or {}
        where = ", ".join(str(p) for p in (loc.get("city"), loc.get("state"), loc.get("country"))
                          if p)
        at = parse_time(detail["datetime"])
        # EasyPost details carry no id: derive a stable one from what identifies the scan.
        digest = hashlib.sha1(f"{at.isoformat()}|{detail['status']}|{detail.get('message')}"
                              .encode()).hexdigest()[:16]
        events.append(TrackingEvent(id=f"ep-{digest}", status=status, at=at, location=where,
                                    message=str(detail.get("message") or "")))
    status = normalize_status(raw.get("status") or "unknown", raw.get("status_detail"))
    return Tracker(tracking_number=code, status=status or "unknown", events=events)
