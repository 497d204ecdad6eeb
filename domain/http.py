"""The one HTTP transport to third parties (carriers, storefronts): retries, budget, errors.

:class:`RetryingClient` sends a request and retries with tenacity what may succeed later
(transport errors, 5xx, 429), within a time budget per call: exponential backoff with jitter,
``Retry-After`` honoured. It turns each outcome into one of three things a stage can act on:

* the response (2xx/3xx, or a 404 the caller allowed);
* :class:`HttpRejected`: the server refused the request (4xx); the same request will be
  refused again;
* :class:`HttpUnavailable`: no useful answer within the budget; try again later.
  ``outcome_unknown`` says the request may have been carried out (a non-idempotent request
  that timed out after it was sent): look before sending it again.

Only idempotent requests are retried on errors that could come after the server acted
(timeouts, 5xx). A non-idempotent request is retried only when the server provably did not
act: a refused connection or a 429. An optional :class:`AttemptGuard` (a circuit breaker)
is asked before, and told after, every attempt.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

import httpx
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception

log = logging.getLogger(__name__)

T = TypeVar("T")
_BACKOFF_START_S = 0.2
_BACKOFF_CAP_S = 5.0


class HttpUnavailable(Exception):
    """No useful answer within the retry budget; safe to try again later."""

    def __init__(self, message: str, cause: BaseException | None = None,
                 retry_after_s: float | None = None, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after_s = retry_after_s
        self.outcome_unknown = outcome_unknown


class HttpRejected(Exception):
    """The server refused the request (HTTP 4xx); the same request will be refused again."""

    def __init__(self, status_code: int, error: str) -> None:
        super().__init__(f"HTTP {status_code}: {error}")
        self.status_code = status_code
        self.error = error


class AttemptGuard(Protocol[T]):
    """Asked before each attempt (raise to send nothing), told each attempt's outcome."""

    def before(self) -> T: ...

    def after(self, token: T, ok: bool) -> None: ...


class RetryableResponse(Exception):
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
    """What the server said was wrong, short: ``{"error": ...}`` (EasyPost, ours) or
    ``{"errors": ...}`` (Shopify), else the body."""
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
    if isinstance(body, dict) and "errors" in body:
        return json.dumps(body["errors"])[:500]
    return str(body)[:500]


class Backoff:
    """Decides the pause before each retry, and whether the budget allows one more.

    Both tenacity's ``wait`` and ``stop`` consult it (memoised per attempt), so the decision to
    give up is made on the actual next pause, whichever order tenacity asks in.
    """

    def __init__(self, budget_s: float, what: str) -> None:
        self.budget_s = budget_s
        self.what = what
        self._pauses: dict[int, float] = {}

    def pause(self, state: RetryCallState) -> float:
        n = state.attempt_number
        if n not in self._pauses:
            exc = state.outcome.exception() if state.outcome else None
            remaining = max(0.0, self.budget_s - (state.seconds_since_start or 0.0))
            if isinstance(exc, RetryableResponse) and exc.retry_after_s is not None:
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
        log.warning("%s failed (attempt %d: %s); retrying in %.2fs", self.what,
                    state.attempt_number, exc, self.pause(state))


def _safe_to_repeat(exc: BaseException) -> bool:
    """For non-idempotent requests: errors that prove the server did not act."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    return isinstance(exc, RetryableResponse) and exc.response.status_code == 429


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, RetryableResponse))


class RetryingClient:
    """A synchronous HTTP client of one third-party API (one connection pool).

    ``timeout_s`` bounds each request; ``retry_max_s`` bounds the retries of one call;
    ``name`` says whose API it is in log lines (never a URL with credentials or a body).
    """

    def __init__(self, base_url: str = "", *, name: str, timeout_s: float = 10.0,
                 retry_max_s: float = 30.0, headers: Mapping[str, str] | None = None,
                 auth: httpx.Auth | tuple[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.retry_max_s = retry_max_s
        self.attempts = 0  # HTTP requests sent (figures for benchmarks)
        self.retries = 0
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            headers={"User-Agent": f"orderfleet-{name}/1", "Accept": "application/json",
                     **(headers or {})},
            auth=auth,
        )

    def request(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                params: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, not_found_ok: bool = False,
                idempotent: bool = True, guard: AttemptGuard[Any] | None = None
                ) -> httpx.Response | None:
        """Send one request with retries; return the response (None for an allowed 404).

        Raises HttpRejected (4xx), HttpUnavailable (budget spent, or a non-idempotent request
        whose outcome is unknown), or whatever ``guard.before`` raises.
        """
        backoff = Backoff(self.retry_max_s, f"{self.name} call {method} {path}")

        def before_sleep(state: RetryCallState) -> None:
            self.retries += 1
            backoff.log_retry(state)

        def attempt() -> httpx.Response:
            token = guard.before() if guard is not None else None
            self.attempts += 1
            try:
                response = self._http.request(method, path, json=json, content=content,
                                              params=params, headers=headers)
            except httpx.TransportError:
                if guard is not None:
                    guard.after(token, False)
                raise
            failed = response.status_code >= 500 or response.status_code == 429
            if guard is not None:
                guard.after(token, not failed)
            if failed:
                raise RetryableResponse(response)
            return response

        retrying = Retrying(
            retry=retry_if_exception(_transient if idempotent else _safe_to_repeat),
            wait=backoff.pause, stop=backoff.stop, before_sleep=before_sleep, reraise=False)
        try:
            response = retrying(attempt)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise HttpUnavailable(
                f"{self.name} {method} {path} failed after "
                f"{exc.last_attempt.attempt_number} attempts: {cause}",
                cause,
                cause.retry_after_s if isinstance(cause, RetryableResponse) else None,
                outcome_unknown=not idempotent and not _safe_to_repeat(cause or Exception()),
            ) from cause
        except (httpx.TransportError, RetryableResponse) as exc:
            # Not retried (a non-idempotent request): the server may have acted.
            raise HttpUnavailable(
                f"{self.name} {method} {path} failed, outcome unknown: {exc}", exc,
                exc.retry_after_s if isinstance(exc, RetryableResponse) else None,
                outcome_unknown=True,
            ) from exc
        if response.status_code == 404 and not_found_ok:
            return None
        if response.status_code >= 400:
            raise HttpRejected(response.status_code, error_text(response))
        return response

    def close(self) -> None:
        self._http.close()
