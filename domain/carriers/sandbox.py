"""The adapter for orderfleet's own carrier API (served by ``sandbox.carrier``).

Its label purchase is idempotent on the key at the carrier, so every call here is safe to
retry, the batch purchase included.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from domain.carriers.base import (
    BatchResult,
    CarrierAdapter,
    HttpTransport,
    Label,
    LabelRequest,
    Rate,
    Tracker,
    carrier_chunks,
)
from domain.db import chunks

if TYPE_CHECKING:
    from domain.breaker import CircuitBreaker

MAX_BATCH_LABELS = 500
MAX_TRACKING_NUMBERS = 1000
MAX_LOOKUP_KEYS = 1000
# Tracking numbers carry their carrier in the prefix, so a tracking call can name its breaker.
TRACKING_PREFIXES = {"SBXP": "sbx-post", "SBXA": "sbx-air"}


def carrier_of_tracking_number(number: str) -> str | None:
    return TRACKING_PREFIXES.get(number[:4])


class SandboxCarrier(CarrierAdapter):
    """Client of the sandbox carrier API (``/v1/...``)."""

    name = "sandbox"

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 10.0,
        retry_max_s: float = 30.0,
        *,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.transport = HttpTransport(self.base_url, timeout_s=timeout_s,
                                       retry_max_s=retry_max_s, breaker=breaker)

    # -- labels ------------------------------------------------------------------------------

    def buy_labels(self, items: Sequence[LabelRequest]) -> BatchResult:
        """Buy labels in batches of 500, one carrier per call (each has its own breaker)."""
        labels: list[Label] = []
        errors: dict[str, str] = {}
        for carrier, chunk in carrier_chunks(items, MAX_BATCH_LABELS):
            body = self.transport.call(
                "POST", "/v1/labels/batch", json={"labels": [i.to_json() for i in chunk]},
                circuit=carrier)
            labels.extend(Label.from_json(label) for label in body["labels"])
            for err in body["errors"]:
                # A key is missing only for a malformed item; the index still names it.
                key = err.get("idempotency_key") or f"#{err.get('index', '?')}"
                errors[key] = err["error"]
        order = {item.idempotency_key: n for n, item in enumerate(items)}
        labels.sort(key=lambda label: order.get(label.idempotency_key, len(order)))
        return BatchResult(labels=labels, errors=errors)

    def buy_label(self, item: LabelRequest) -> Label:
        return Label.from_json(
            self.transport.call("POST", "/v1/labels", json=item.to_json(), circuit=item.carrier))

    def find_label(self, idempotency_key: str, carrier: str | None = None) -> Label | None:
        path = f"/v1/labels/by-key/{quote(idempotency_key, safe='')}"
        body = self.transport.call("GET", path, not_found_ok=True, circuit=carrier or self.name)
        return None if body is None else Label.from_json(body)

    def find_labels(
        self, idempotency_keys: Sequence[str], carrier: str | None = None
    ) -> dict[str, Label]:
        """One look-up call per 1000 keys."""
        found: dict[str, Label] = {}
        for chunk in chunks(list(idempotency_keys), MAX_LOOKUP_KEYS):
            body = self.transport.call("POST", "/v1/labels/lookup",
                                       json={"idempotency_keys": list(chunk),
                                             **({"carrier": carrier} if carrier else {})},
                                       circuit=carrier or self.name)
            for data in body["labels"]:
                label = Label.from_json(data)
                found[label.idempotency_key] = label
        return found

    def void_label(self, label_id: str, carrier: str | None = None) -> None:
        self.transport.call("POST", f"/v1/labels/{quote(label_id, safe='')}/void",
                            circuit=carrier or self.name)

    # -- tracking and rates --------------------------------------------------------------------

    def track(self, tracking_numbers: Sequence[str], carrier: str | None = None) -> list[Tracker]:
        """Trackers in the order asked, in requests of up to 1000 numbers."""
        trackers: list[Tracker] = []
        for chunk in chunks(list(tracking_numbers), MAX_TRACKING_NUMBERS):
            circuit = carrier or carrier_of_tracking_number(chunk[0]) or self.name
            body = self.transport.call("POST", "/v1/tracking",
                                       json={"tracking_numbers": list(chunk)}, circuit=circuit)
            trackers.extend(Tracker.from_json(t) for t in body["trackers"])
        return trackers

    def rates(
        self, from_country: str, to_country: str, weight_g: int, carrier: str | None = None
    ) -> list[Rate]:
        params: dict[str, str | int] = {
            "from_country": from_country,
            "to_country": to_country,
            "weight_g": weight_g,
        }
        if carrier:
            params["carrier"] = carrier
        body = self.transport.call("GET", "/v1/rates", params=params,
                                   circuit=carrier or self.name)
        return [
            Rate(
                carrier=r["carrier"],
                service=r["service"],
                rate=Decimal(r["rate"]),
                currency=r["currency"],
                est_delivery_days=int(r["est_delivery_days"]),
            )
            for r in body["rates"]
        ]

    # -- sandbox helpers (a real carrier has none of these) ----------------------------------

    def stats(self) -> dict[str, int]:
        return dict(self.transport.call("GET", "/v1/stats"))

    def books(self) -> dict[str, Any]:
        """Labels charged and not voided, and the references charged more than once."""
        return dict(self.transport.call("GET", "/v1/admin/books"))

    def reset(self) -> None:
        """Clear the sandbox carrier's books and faults."""
        self.transport.call("POST", "/v1/reset")

    def set_faults(self, **profile: object) -> dict[str, object]:
        """Inject faults from now on (see ``sandbox.carrier.FaultProfile``)."""
        return dict(self.transport.call("PUT", "/v1/admin/faults", json=profile))

    def clear_faults(self) -> None:
        self.transport.call("DELETE", "/v1/admin/faults")

    def close(self) -> None:
        self.transport.close()


# The name the pipeline used before adapters existed.
CarrierClient = SandboxCarrier
