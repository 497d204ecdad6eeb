"""What every carrier adapter shares: the data it exchanges, its errors, and its transport.

The transport (``HttpTransport``) is the project's one retrying HTTP client
(``domain.http``: tenacity, exponential backoff with jitter, ``Retry-After`` honoured, a time
budget per call) plus the carrier's shared circuit breaker, asked before every attempt and told
every attempt's outcome. It turns each outcome into one of three things the pipeline can act on:

* a decoded JSON body;
* :class:`CarrierRejected`: the carrier refused the request (4xx); retrying will not help;
* :class:`CarrierUnavailable`: no useful answer within the budget; try again later.
  ``outcome_unknown`` says the request may have been carried out (a purchase timed out after it
  was sent): look the label up before buying again. :class:`CarrierCircuitOpen` is the special
  case where nothing was sent because the carrier's breaker is open.

Only idempotent requests are retried on errors that could come after the carrier acted
(timeouts, 5xx). A non-idempotent request (an EasyPost purchase) is retried only when the
carrier provably did not act: a refused connection or a 429.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Self

import httpx

from domain.db import chunks
from domain.http import HttpRejected, HttpUnavailable, RetryingClient

if TYPE_CHECKING:
    from domain.breaker import CircuitBreaker, Permit

log = logging.getLogger(__name__)

# The fixed set every carrier's statuses are normalised to (AfterShip's tags, snake_case).
TRACKING_STATUSES = (
    "info_received",
    "in_transit",
    "out_for_delivery",
    "failed_attempt",
    "delivered",
    "exception",
    "expired",
)
# Statuses after which a parcel's tracking will not change any more.
FINAL_TRACKING_STATUSES = frozenset({"delivered", "exception", "expired"})

_BACKOFF_START_S = 0.2
_BACKOFF_CAP_S = 5.0


class CarrierError(Exception):
    """Base class of the carrier adapters' errors."""


class CarrierUnavailable(CarrierError):
    """The carrier did not answer usefully within the retry budget; safe to try again later.

    ``retry_after_s`` is the carrier's own ``Retry-After`` when it sent one: a good countdown
    for re-queueing the task. ``outcome_unknown`` is True when a non-idempotent request may
    have been carried out: look up before retrying.
    """

    def __init__(
        self,
        message: str,
        cause: BaseException | None = None,
        retry_after_s: float | None = None,
        *,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after_s = retry_after_s
        self.outcome_unknown = outcome_unknown


class CarrierCircuitOpen(CarrierUnavailable):
    """The carrier's circuit breaker is open: nothing was sent. Defer, do not fail."""

    retry_after_s: float  # the breaker always knows when it lets a call through again

    def __init__(self, circuit: str, state: str, retry_after_s: float) -> None:
        shown = state.replace("_", "-")
        super().__init__(f"carrier {circuit} circuit is {shown}; retry in {retry_after_s:.1f}s",
                         retry_after_s=retry_after_s)
        self.circuit = circuit
        self.state = state


class CarrierRejected(CarrierError):
    """The carrier refused the request (HTTP 4xx); the same request will be refused again."""

    def __init__(self, status_code: int, error: str) -> None:
        super().__init__(f"carrier rejected the request ({status_code}): {error}")
        self.status_code = status_code
        self.error = error


@dataclass(frozen=True)
class LabelRequest:
    idempotency_key: str  # one per shipment: a retry with the same key never buys a 2nd label
    carrier: str
    service: str
    from_country: str
    to_country: str
    to_postal_code: str
    weight_g: int
    reference: str
    # Full addresses, for carriers that print them (EasyPost). Personal data: never logged.
    to_address: Mapping[str, str] | None = field(default=None, compare=False, repr=False)
    from_address: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The sandbox carrier's wire format (addresses are not part of it)."""
        return {
            "idempotency_key": self.idempotency_key,
            "carrier": self.carrier,
            "service": self.service,
            "from_country": self.from_country,
            "to_country": self.to_country,
            "to_postal_code": self.to_postal_code,
            "weight_g": self.weight_g,
            "reference": self.reference,
        }


@dataclass(frozen=True)
class Label:
    idempotency_key: str
    label_id: str
    tracking_number: str
    carrier: str
    service: str
    rate: Decimal
    currency: str
    created_at: datetime  # aware, UTC
    replayed: bool  # True when the carrier returned an earlier purchase for the same key

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Label:
        return cls(
            idempotency_key=data["idempotency_key"],
            label_id=data["label_id"],
            tracking_number=data["tracking_number"],
            carrier=data["carrier"],
            service=data["service"],
            rate=Decimal(data["rate"]),
            currency=data["currency"],
            created_at=parse_time(data["created_at"]),
            replayed=bool(data.get("replayed", False)),
        )


@dataclass(frozen=True)
class BatchResult:
    labels: list[Label]
    errors: dict[str, str]  # idempotency_key -> the carrier's reason for refusing that item


@dataclass(frozen=True)
class TrackingEvent:
    id: str  # stable across polls: safe to de-duplicate on
    status: str  # one of TRACKING_STATUSES
    at: datetime  # aware, UTC
    location: str
    message: str


@dataclass(frozen=True)
class Tracker:
    tracking_number: str
    status: str  # one of TRACKING_STATUSES, or "unknown" when the carrier has nothing yet
    events: list[TrackingEvent]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tracker:
        return cls(
            tracking_number=data["tracking_number"],
            status=data["status"],
            events=[
                TrackingEvent(
                    id=e["id"],
                    status=e["status"],
                    at=parse_time(e["at"]),
                    location=e.get("location", ""),
                    message=e.get("message", ""),
                )
                for e in data.get("events", [])
            ],
        )


@dataclass(frozen=True)
class Rate:
    carrier: str
    service: str
    rate: Decimal
    currency: str
    est_delivery_days: int


class CarrierAdapter(ABC):
    """One carrier API. Every method may raise CarrierUnavailable or CarrierRejected."""

    #: Short name of the API ("sandbox", "easypost"): the breaker key of calls that are not
    #: about one carrier (a rate quote across carriers, a void by label id).
    name: str = "carrier"

    @abstractmethod
    def rates(
        self, from_country: str, to_country: str, weight_g: int, carrier: str | None = None
    ) -> list[Rate]:
        """Quotes for a parcel, cheapest first; every carrier unless ``carrier`` is given."""

    @abstractmethod
    def buy_label(self, item: LabelRequest) -> Label:
        """Buy one label (idempotent on ``item.idempotency_key`` at the carrier or here)."""

    @abstractmethod
    def buy_labels(self, items: Sequence[LabelRequest]) -> BatchResult:
        """Buy labels in the carrier's batch call(s). Refused items land in ``errors``."""

    @abstractmethod
    def find_label(self, idempotency_key: str, carrier: str | None = None) -> Label | None:
        """The label bought under this key, or None: look it up before buying again."""

    def find_labels(
        self, idempotency_keys: Sequence[str], carrier: str | None = None
    ) -> dict[str, Label]:
        """Labels already bought for these keys (key -> label); missing keys are absent."""
        found = {}
        for key in idempotency_keys:
            label = self.find_label(key, carrier=carrier)
            if label is not None:
                found[key] = label
        return found

    @abstractmethod
    def void_label(self, label_id: str, carrier: str | None = None) -> None:
        """Void (refund) a label. Voiding an already voided label is fine."""

    @abstractmethod
    def track(self, tracking_numbers: Sequence[str], carrier: str | None = None) -> list[Tracker]:
        """Trackers, statuses normalised to TRACKING_STATUSES ("unknown": nothing yet)."""

    def close(self) -> None:  # noqa: B027 - optional for adapters without resources
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    # A carrier that drops the offset means UTC; never let a naive datetime into the pipeline.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def carrier_chunks(items: Sequence[LabelRequest],
                   size: int) -> Iterator[tuple[str, Sequence[LabelRequest]]]:
    """(carrier, up to ``size`` requests): one carrier per call, so each call counts against
    that carrier's own breaker."""
    by_carrier: dict[str, list[LabelRequest]] = {}
    for item in items:
        by_carrier.setdefault(item.carrier, []).append(item)
    for carrier, group in by_carrier.items():
        for chunk in chunks(group, size):
            yield carrier, chunk


# --------------------------------------------------------------------------------------------
# HTTP transport: the project's one retrying client, plus the shared breaker
# --------------------------------------------------------------------------------------------


class _BreakerGuard:
    """Asks the carrier's shared breaker before each attempt and reports the outcome."""

    def __init__(self, breaker: CircuitBreaker, circuit: str) -> None:
        self.breaker, self.circuit = breaker, circuit

    def before(self) -> Permit:
        permit = self.breaker.acquire(self.circuit)
        if not permit.allowed:
            raise CarrierCircuitOpen(permit.name, permit.state, permit.retry_after_s)
        return permit

    def after(self, token: Permit, ok: bool) -> None:
        self.breaker.record(token, ok=ok)


class HttpTransport:
    """A carrier API over :class:`domain.http.RetryingClient`, in the carriers' terms.

    ``breaker`` (shared by all workers) is asked before, and told after, every attempt of a
    call that names its ``circuit`` (a carrier code); its errors become
    :class:`CarrierRejected` and :class:`CarrierUnavailable`.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, retry_max_s: float = 30.0,
                 headers: Mapping[str, str] | None = None,
                 auth: httpx.Auth | tuple[str, str] | None = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.client = RetryingClient(base_url, name="carrier", timeout_s=timeout_s,
                                     retry_max_s=retry_max_s, headers=headers, auth=auth)
        self.base_url = self.client.base_url
        self.breaker = breaker

    @property
    def attempts(self) -> int:
        return self.client.attempts

    @property
    def retries(self) -> int:
        return self.client.retries

    def call(self, method: str, path: str, *, json: Any = None,
             params: Mapping[str, Any] | None = None, not_found_ok: bool = False,
             circuit: str | None = None, idempotent: bool = True) -> Any:
        """Send one request with retries; return the decoded JSON body (None for an allowed 404).

        ``circuit`` names the breaker consulted (a carrier code); None skips the breaker.
        """
        guard = _BreakerGuard(self.breaker, circuit) if self.breaker and circuit else None
        try:
            response = self.client.request(method, path, json=json, params=params,
                                           not_found_ok=not_found_ok, idempotent=idempotent,
                                           guard=guard)
        except HttpRejected as exc:
            raise CarrierRejected(exc.status_code, exc.error) from None
        except HttpUnavailable as exc:
            raise CarrierUnavailable(str(exc), exc.cause, exc.retry_after_s,
                                     outcome_unknown=exc.outcome_unknown) from exc.cause
        return None if response is None else response.json()

    def close(self) -> None:
        self.client.close()
