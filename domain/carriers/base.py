"""What every carrier adapter shares: the data it exchanges, its errors, and one HTTP transport.

The transport is the one place that talks HTTP to a carrier. It retries with tenacity
(exponential backoff with jitter, ``Retry-After`` honoured, a time budget per call), asks the
shared circuit breaker before every attempt and reports every attempt's outcome to it. It turns
each outcome into one of three things the pipeline can act on:

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
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception

if TYPE_CHECKING:
    from domain.breaker import CircuitBreaker

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


_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
# HTTP transport: retries, Retry-After, breaker
# --------------------------------------------------------------------------------------------


class _RetryableResponse(Exception):
    """A 5xx or 429 answer, raised inside the retry loop so tenacity can retry it."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code} from {response.request.url}")
        self.response = response
        self.retry_after_s = retry_after_s(response)


def retry_after_s(response: httpx.Response) -> float | None:
    """The response's ``Retry-After`` in seconds (delta or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the other form the header may take: an HTTP date
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        err = body["error"]
        if isinstance(err, dict):  # EasyPost: {"error": {"code", "message", "errors": [...]}}
            parts = [str(err.get("message") or err.get("code") or err)]
            for item in err.get("errors") or []:
                if isinstance(item, dict) and item.get("field"):
                    parts.append(f"{item['field']}: {item.get('message', '')}")
            return "; ".join(parts)[:500]
        return str(err)
    return str(body)[:500]


class Backoff:
    """Decides the pause before each retry, and whether the budget allows one more.

    Both tenacity's ``wait`` and ``stop`` consult it (memoised per attempt), so the decision to
    give up is made on the actual next pause, whichever order tenacity asks in.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self._pauses: dict[int, float] = {}

    def pause(self, state: RetryCallState) -> float:
        n = state.attempt_number
        if n not in self._pauses:
            exc = state.outcome.exception() if state.outcome else None
            remaining = max(0.0, self.budget_s - (state.seconds_since_start or 0.0))
            if isinstance(exc, _RetryableResponse) and exc.retry_after_s is not None:
                # The server said when; retrying earlier would only be refused again, so this
                # pause is not shortened (stop() gives up if it does not fit the budget).
                pause = exc.retry_after_s
            else:
                # Exponential from 0.2 s, capped at 5 s, +-25 % jitter so that many workers
                # failing together do not retry in lockstep; the last pause is cut to fit the
                # budget so the final attempt happens at the deadline rather than not at all.
                base = min(_BACKOFF_CAP_S, _BACKOFF_START_S * 2 ** (n - 1))
                pause = min(_BACKOFF_CAP_S, base * random.uniform(0.75, 1.25), remaining)
            self._pauses[n] = pause
        return self._pauses[n]

    def stop(self, state: RetryCallState) -> bool:
        remaining = self.budget_s - (state.seconds_since_start or 0.0)
        return remaining <= 0.0 or self.pause(state) > remaining

    def log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "carrier call failed (attempt %d: %s); retrying in %.2fs",
            state.attempt_number,
            exc,
            self.pause(state),
        )


def _safe_to_repeat(exc: BaseException) -> bool:
    """For non-idempotent requests: errors that prove the carrier did not act."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    return isinstance(exc, _RetryableResponse) and exc.response.status_code == 429


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, _RetryableResponse))


class HttpTransport:
    """A synchronous HTTP client of one carrier API (one connection pool).

    ``timeout_s`` bounds each request; ``retry_max_s`` bounds the retries of one call;
    ``breaker`` (shared by all workers) is asked before, and told after, every attempt.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        retry_max_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_max_s = retry_max_s
        self.breaker = breaker
        self.attempts = 0  # HTTP requests sent by this transport (figures for benchmarks)
        self.retries = 0
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            headers={"User-Agent": "orderfleet-carrier-client/1", "Accept": "application/json",
                     **(headers or {})},
            auth=auth,
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        not_found_ok: bool = False,
        circuit: str | None = None,
        idempotent: bool = True,
    ) -> Any:
        """Send one request with retries; return the decoded JSON body (None for an allowed 404).

        ``circuit`` names the breaker consulted (a carrier code); None skips the breaker.
        """
        backoff = Backoff(self.retry_max_s)

        def before_sleep(state: RetryCallState) -> None:
            self.retries += 1
            backoff.log_retry(state)

        retrying = Retrying(
            retry=retry_if_exception(_transient if idempotent else _safe_to_repeat),
            wait=backoff.pause,
            stop=backoff.stop,
            before_sleep=before_sleep,
            reraise=False,
        )
        try:
            response = retrying(self._attempt, method, path, json, params, circuit)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise CarrierUnavailable(
                f"carrier {method} {path} failed after "
                f"{exc.last_attempt.attempt_number} attempts: {cause}",
                cause,
                cause.retry_after_s if isinstance(cause, _RetryableResponse) else None,
                outcome_unknown=not idempotent and not _safe_to_repeat(cause or Exception()),
            ) from cause
        except (httpx.TransportError, _RetryableResponse) as exc:
            # Not retried (a non-idempotent request): the carrier may have acted.
            raise CarrierUnavailable(
                f"carrier {method} {path} failed, outcome unknown: {exc}",
                exc,
                exc.retry_after_s if isinstance(exc, _RetryableResponse) else None,
                outcome_unknown=True,
            ) from exc
        if response.status_code == 404 and not_found_ok:
            return None
        if response.status_code >= 400:
            raise CarrierRejected(response.status_code, error_text(response))
        return response.json()

    def _attempt(
        self,
        method: str,
        path: str,
        json: Any,
        params: Mapping[str, Any] | None,
        circuit: str | None,
    ) -> httpx.Response:
        permit = self.breaker.acquire(circuit) if self.breaker and circuit else None
        if permit is not None and not permit.allowed:
            raise CarrierCircuitOpen(permit.name, permit.state, permit.retry_after_s)
        self.attempts += 1
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError:
            if permit is not None:
                self.breaker.record(permit, ok=False)  # type: ignore[union-attr]
            raise
        failed = response.status_code >= 500 or response.status_code == 429
        if permit is not None:
            self.breaker.record(permit, ok=not failed)  # type: ignore[union-attr]
        if failed:
            raise _RetryableResponse(response)
        return response

    def close(self) -> None:
        self._http.close()
