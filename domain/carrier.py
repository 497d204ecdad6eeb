"""The client the pipeline uses to buy labels and track parcels at the carrier.

Every call is safe to retry: label purchases carry an idempotency key (the carrier returns the
same label for a repeated key and charges once), voiding is idempotent and the rest are reads.
So the client retries transport errors, 5xx and 429 on its own, within a time budget, and
reports the outcome as one of two exceptions the pipeline can act on:

* :class:`CarrierUnavailable`: the carrier could not be reached in time; try again later.
* :class:`CarrierRejected`: the carrier refused the request (4xx); retrying will not help.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type

log = logging.getLogger(__name__)

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

MAX_BATCH_LABELS = 500
MAX_TRACKING_NUMBERS = 1000

_BACKOFF_START_S = 0.2
_BACKOFF_CAP_S = 5.0


class CarrierError(Exception):
    """Base class of the carrier client's errors."""


class CarrierUnavailable(CarrierError):
    """The carrier did not answer usefully within the retry budget; safe to try again later.

    ``retry_after_s`` is the carrier's own ``Retry-After`` when it sent one: a good countdown
    for re-queueing the task.
    """

    def __init__(
        self, message: str, cause: BaseException | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after_s = retry_after_s


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
            created_at=_parse_time(data["created_at"]),
            replayed=bool(data.get("replayed", False)),
        )


@dataclass(frozen=True)
class BatchResult:
    labels: list[Label]
    errors: dict[str, str]  # idempotency_key -> the carrier's reason for refusing that item


@dataclass(frozen=True)
class TrackingEvent:
    id: str  # stable across polls: safe to de-duplicate on
    status: str
    at: datetime  # aware, UTC
    location: str
    message: str


@dataclass(frozen=True)
class Tracker:
    tracking_number: str
    status: str  # one of TRACKING_STATUSES, or "unknown" for a number the carrier never issued
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
                    at=_parse_time(e["at"]),
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


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    # A carrier that drops the offset means UTC; never let a naive datetime into the pipeline.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _RetryableResponse(Exception):
    """A 5xx or 429 answer, raised inside the retry loop so tenacity can retry it."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code} from {response.request.url}")
        self.response = response
        self.retry_after_s = _retry_after_s(response)


def _retry_after_s(response: httpx.Response) -> float | None:
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


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:500]


class _Backoff:
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


class CarrierClient:
    """A synchronous client of the carrier API (one connection pool per client).

    ``timeout_s`` bounds each HTTP request; ``retry_max_s`` bounds the retries of one call.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0, retry_max_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_max_s = retry_max_s
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            headers={"User-Agent": "orderfleet-carrier-client/1", "Accept": "application/json"},
        )

    # -- labels ------------------------------------------------------------------------------

    def buy_labels(self, items: Sequence[LabelRequest]) -> BatchResult:
        """Buy labels in batches of 500. Items the carrier refuses land in ``errors``."""
        labels: list[Label] = []
        errors: dict[str, str] = {}
        for chunk in _chunks(items, MAX_BATCH_LABELS):
            body = self._call(
                "POST", "/v1/labels/batch", json={"labels": [i.to_json() for i in chunk]}
            )
            labels.extend(Label.from_json(label) for label in body["labels"])
            for err in body["errors"]:
                # A key is missing only for a malformed item; the index still names it.
                key = err.get("idempotency_key") or f"#{err.get('index', '?')}"
                errors[key] = err["error"]
        return BatchResult(labels=labels, errors=errors)

    def buy_label(self, item: LabelRequest) -> Label:
        return Label.from_json(self._call("POST", "/v1/labels", json=item.to_json()))

    def find_label(self, idempotency_key: str) -> Label | None:
        """The label bought under this key, or None: look it up before buying again."""
        path = f"/v1/labels/by-key/{quote(idempotency_key, safe='')}"
        body = self._call("GET", path, not_found_ok=True)
        return None if body is None else Label.from_json(body)

    def void_label(self, label_id: str) -> None:
        """Void (refund) a label. Voiding an already voided label is fine."""
        self._call("POST", f"/v1/labels/{quote(label_id, safe='')}/void")

    # -- tracking and rates --------------------------------------------------------------------

    def track(self, tracking_numbers: Sequence[str]) -> list[Tracker]:
        """Trackers in the order asked, in requests of up to 1000 numbers."""
        trackers: list[Tracker] = []
        for chunk in _chunks(tracking_numbers, MAX_TRACKING_NUMBERS):
            body = self._call("POST", "/v1/tracking", json={"tracking_numbers": list(chunk)})
            trackers.extend(Tracker.from_json(t) for t in body["trackers"])
        return trackers

    def rates(
        self, from_country: str, to_country: str, weight_g: int, carrier: str | None = None
    ) -> list[Rate]:
        """Quotes for a parcel, cheapest first; every carrier unless ``carrier`` is given."""
        params: dict[str, str | int] = {
            "from_country": from_country,
            "to_country": to_country,
            "weight_g": weight_g,
        }
        if carrier:
            params["carrier"] = carrier
        body = self._call("GET", "/v1/rates", params=params)
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

    # -- sandbox helpers -----------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return dict(self._call("GET", "/v1/stats"))

    def reset(self) -> None:
        """Clear the sandbox carrier's state (sandbox only; a real carrier has no such call)."""
        self._call("POST", "/v1/reset")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str | int] | None = None,
        not_found_ok: bool = False,
    ) -> Any:
        """Send one request with retries; return the decoded JSON body (None for an allowed 404)."""
        backoff = _Backoff(self.retry_max_s)
        retrying = Retrying(
            retry=retry_if_exception_type((httpx.TransportError, _RetryableResponse)),
            wait=backoff.pause,
            stop=backoff.stop,
            before_sleep=backoff.log_retry,
            reraise=False,
        )
        try:
            response = retrying(self._send, method, path, json, params)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise CarrierUnavailable(
                f"carrier {method} {path} failed after "
                f"{exc.last_attempt.attempt_number} attempts: {cause}",
                cause,
                cause.retry_after_s if isinstance(cause, _RetryableResponse) else None,
            ) from cause
        if response.status_code == 404 and not_found_ok:
            return None
        if response.status_code >= 400:
            raise CarrierRejected(response.status_code, _error_text(response))
        return response.json()

    def _send(
        self, method: str, path: str, json: Any, params: dict[str, str | int] | None
    ) -> httpx.Response:
        response = self._http.request(method, path, json=json, params=params)
        if response.status_code >= 500 or response.status_code == 429:
            raise _RetryableResponse(response)
        return response
