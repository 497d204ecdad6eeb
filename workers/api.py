"""The HTTP front door: storefront webhooks and a native order endpoint (Starlette + uvicorn).

Routes:

* ``POST /webhooks/shopify/{shop}``: Shopify ``orders/paid``, ``orders/cancelled`` and
  ``orders/updated`` (topic from ``X-Shopify-Topic``), signed with the shop's secret from
  ``ORDERFLEET_SHOPIFY_SECRETS``.
* ``POST /webhooks/woocommerce/{store}``: WooCommerce ``order.*`` webhooks (``X-WC-Webhook-*``).
* ``POST /orders``: the native schema for custom storefronts; ``Authorization: Bearer <store
  secret>`` (``ORDERFLEET_STORE_SECRETS``) and an ``Idempotency-Key`` header.
* ``GET /healthz``; the review desk under ``/review``; the order-health page under ``/ops``.

Every request is checked in this order, before anything is parsed: body size (413), signature
or token (401; an unknown shop gets the same 401), content type (415), JSON nesting depth and
then the JSON itself (422 naming the field).
Unauthenticated requests (401, and 413 whose signature cannot be checked) write nothing: they
are counted (``orderfleet_intake_refused_total``) and logged at most once a minute. The raw body
of every other refused request is kept in ``rejected_orders`` (the exceptions desk). A signed
order body that does not validate is held there too and answered 200 (``held``), so the platform
does not retry a body that cannot change. An accepted
delivery is persisted (order and inbox row in one transaction) before the answer; webhooks that
arrive together share that transaction (group commit, :class:`DeliveryWriter`). The pipeline
runs afterwards: new order ids go to the fraud stage in micro-batches, and an order whose
message never left (a crash) is re-driven by the beat sweep, because it is in the database.

Measured with ``orderfleet bench webhooks`` (see benchmarks/webhooks.py).

Run it with ``orderfleet serve --port P`` (or ``python -m workers.api``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from prometheus_client import Counter
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from config.settings import Settings, get_settings
from domain.db import chunks, unit_of_work
from domain.lifecycle import State
from domain.migrate import pending_revisions
from domain.pipeline import advance_committed
from domain.platforms import signature_matches
from tasks.intake import (
    Delivery,
    DeliveryResult,
    accept_deliveries,
    parse_timestamp,
    record_rejection,
    storable_text,
)
from workers import app as _celery_app  # noqa: F401 - installs how tasks are sent

log = logging.getLogger("orderfleet.api")

# A rejected body larger than this is kept truncated: enough for ops to see what it was.
KEPT_BODY_BYTES = 64 * 1024
# Deeper JSON is refused before parsing (json's recursive parser would raise RecursionError);
# real order bodies nest 5-6 levels.
MAX_JSON_DEPTH = 32

REFUSED = Counter("orderfleet_intake_refused", "Requests refused at the door, by source and "
                  "HTTP status (unauthenticated ones are never stored)", ["source", "status"])


class RefusalLog:
    """Logs unauthenticated refusals at most once per ``interval_s``, with the count since."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last = -interval_s
        self._since: collections.Counter[str] = collections.Counter()

    def note(self, source: str, status: int) -> None:
        REFUSED.labels(source, str(status)).inc()
        self._since[f"{source} {status}"] += 1
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            log.warning("refused unauthenticated requests (not stored) since the last line: %s",
                        ", ".join(f"{k}: {n}" for k, n in sorted(self._since.items())))
            self._since.clear()
            self._last = now


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when brackets outside strings nest deeper than ``limit`` (no parsing needed)."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _storable(value: Any) -> Any:
    """The parsed JSON with strings PostgreSQL can store (no NUL, no lone surrogates)."""
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
            return storable_text(value)
        return value
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


class ApiError(Exception):
    """A request refused before it became a delivery; the body is kept for ops."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message
        self.body: bytes | None = None  # what was read of a body refused mid-way
        self.body_size = 0

    def to_json(self) -> dict[str, Any]:
        return {"error": f"{self.field}: {self.message}",
                "errors": [{"field": self.field, "message": self.message}]}


class FraudStageBatcher:
    """Collects new order ids and sends them to the fraud stage in micro-batches.

    One message per ``batch_size`` ids (or per ``api_flush_interval_s``) instead of one per
    webhook: the pipeline's per-message cost is spread over many orders. Ids not yet sent when
    the process dies are safe: their orders are ``received`` in the database and the beat
    sweep re-drives them.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pending: list[int] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent_messages = 0

    def add(self, order_ids: list[int]) -> None:
        if order_ids:
            self._pending.extend(order_ids)
            if len(self._pending) >= self.settings.batch_size:
                self._wake.set()

    async def flush(self) -> None:
        ids, self._pending = self._pending, []
        size = self.settings.batch_size
        for part in chunks(ids, size):
            try:
                self.sent_messages += await run_in_threadpool(
                    advance_committed, State.RECEIVED, part, size)
            except Exception:  # the broker blinked: the re-drive sweep will send them
                log.exception("could not enqueue %d orders for the fraud check", len(part))

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.api_flush_interval_s)
            self._wake.clear()
            if self._pending:
                await self.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


class DeliveryWriter:
    """Group commit: deliveries that arrive together are written in one transaction.

    Under load, a transaction's fixed cost (BEGIN, COMMIT's WAL flush, a pooled connection)
    is shared by up to ``MAX_GROUP`` webhooks; a lone webhook is written at once, unbatched.
    Each delivery still answers only after the transaction holding it committed. Should a
    group fail, its deliveries are retried one per transaction, so one bad apple fails alone.
    """

    MAX_GROUP = 64
    WRITERS = 4  # transactions in flight at once (the engine's pool holds 10 connections)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[tuple[Delivery, asyncio.Future[DeliveryResult]]] = \
            asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def write(self, delivery: Delivery) -> DeliveryResult:
        future: asyncio.Future[DeliveryResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((delivery, future))
        return await future

    def _write_group(self, deliveries: list[Delivery]) -> list[DeliveryResult]:
        with unit_of_work(self.settings) as uow:
            return accept_deliveries(uow, deliveries, self.settings, enqueue=False)

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self.MAX_GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                results = await run_in_threadpool(self._write_group, [d for d, _ in group])
            except Exception as exc:
                if len(group) == 1:
                    _settle(group[0][1], exc=exc)
                    continue
                for delivery, future in group:  # one per transaction: only the bad one fails
                    try:
                        (result,) = await run_in_threadpool(self._write_group, [delivery])
                    except Exception as one_exc:
                        _settle(future, exc=one_exc)
                    else:
                        _settle(future, result)
                continue
            for (_, future), result in zip(group, results, strict=True):
                _settle(future, result)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run()) for _ in range(self.WRITERS)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _settle(future: asyncio.Future[DeliveryResult], result: DeliveryResult | None = None, *,
            exc: Exception | None = None) -> None:
    if future.done():  # the client went away; its delivery is written all the same
        return
    if exc is not None:
        future.set_exception(exc)
    elif result is not None:
        future.set_result(result)
    else:
        raise TypeError("settle a delivery with its result or its exception")


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body (signatures are over these exact bytes), refused past ``limit``.

    An oversized body is read no further than what ops get to see of it.
    """
    declared = request.headers.get("content-length", "")
    oversized = declared.isdigit() and int(declared) > limit
    parts, size = [], 0
    async for chunk in request.stream():
        parts.append(chunk)
        size += len(chunk)
        if size > limit or (oversized and size >= KEPT_BODY_BYTES):
            err = ApiError(413, "(body)", f"larger than {limit} bytes")
            err.body = b"".join(parts)[:KEPT_BODY_BYTES]
            err.body_size = int(declared) if oversized else size
            raise err
    return b"".join(parts)


def _require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "header Content-Type",
                       f"must be application/json, got {ctype or 'nothing'}")


def _json(body: bytes) -> Any:
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise ApiError(422, "(body)", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return _storable(json.loads(body, parse_constant=_reject_constant))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, ...
        raise ApiError(422, "(body)", f"not valid JSON ({str(exc)[:200]})") from None


def _header(request: Request, *names: str) -> str:
    for name in names:
        value = request.headers.get(name, "").strip()
        if value:
            return value
    raise ApiError(422, f"header {names[0]}", "required")


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the intake service for these settings (validated, no fallbacks)."""
    settings = settings or get_settings()
    batcher = FraudStageBatcher(settings)
    writer = DeliveryWriter(settings)
    limit = settings.api_max_body_bytes

    def _keep(source: str, store: str | None, body: bytes, err: ApiError) -> None:
        size = max(len(body), err.body_size)
        if err.body is not None:
            body = err.body
        kept = body[:KEPT_BODY_BYTES].decode("utf-8", "replace")
        if size > KEPT_BODY_BYTES:
            kept += f"\n[truncated: {size} bytes received]"
        with unit_of_work(settings) as uow:
            record_rejection(uow, source=source, store=store, raw=kept, http_status=err.status,
                             errors=[{"field": err.field, "message": err.message,
                                      "http_status": str(err.status)}])

    refusals = RefusalLog()

    async def _refuse(source: str, store: str | None, body: bytes, err: ApiError) -> JSONResponse:
        if err.status in (401, 413):
            # Not authenticated (a 413's signature cannot be checked): nothing is written.
            refusals.note(source, err.status)
            return JSONResponse(err.to_json(), status_code=err.status)
        REFUSED.labels(source, str(err.status)).inc()
        log.info("refused a %s request for store %s: %s %s", source, store, err.status, err.field)
        await run_in_threadpool(_keep, source, store, body, err)
        return JSONResponse(err.to_json(), status_code=err.status)

    def _keep_unprocessed(delivery: Delivery, exc: Exception) -> int:
        with unit_of_work(settings) as uow:
            return record_rejection(
                uow, source=delivery.source, store=delivery.store,
                raw=delivery.body.decode("utf-8", "replace"), topic=delivery.topic,
                http_status=200, errors=[{"field": "(delivery)", "message":
                                          f"could not be processed ({type(exc).__name__})"}])

    async def _deliver(delivery: Delivery) -> JSONResponse:
        try:
            result = await writer.write(delivery)
        except (OperationalError, DBAPIError):
            raise  # not stored: 503, the platform delivers it again
        except Exception as exc:
            # A body our code could not handle is still a paid order: kept for a person.
            log.exception("could not process a %s %s delivery for store %s; kept",
                          delivery.source, delivery.topic, delivery.store)
            kept = await run_in_threadpool(_keep_unprocessed, delivery, exc)
            return JSONResponse({"status": "held", "exception_id": kept},
                                status_code=202 if delivery.source == "native" else 200)
        batcher.add(result.new_order_ids)
        log.debug("%s %s for store %s: %s", delivery.source, delivery.topic, delivery.store,
                  result.status)
        body = result.to_json()
        if result.errors:
            body["error"] = "; ".join(f"{e['field']}: {e['message']}" for e in result.errors)
        return JSONResponse(body, status_code=result.http_status)

    async def shopify_webhook(request: Request) -> JSONResponse:
        shop = request.path_params["shop"]
        body = b""
        try:
            body = await _read_body(request, limit)
            # An unknown shop gets the same 401 as a bad signature: shops cannot be enumerated.
            secret = settings.shopify_secrets.get(shop)
            if secret is None or not signature_matches(
                    secret, body, request.headers.get("x-shopify-hmac-sha256")):
                raise ApiError(401, "header X-Shopify-Hmac-Sha256", "missing or does not match")
            _require_json(request)
            topic = _header(request, "x-shopify-topic")
            event_id = _header(request, "x-shopify-event-id", "x-shopify-webhook-id")
            payload = _json(body)
        except ApiError as err:
            return await _refuse("shopify", shop, body, err)
        triggered = parse_timestamp(request.headers.get("x-shopify-triggered-at"))
        if triggered is None and isinstance(payload, dict):
            triggered = parse_timestamp(payload.get("updated_at"))
        return await _deliver(Delivery("shopify", shop, event_id, topic, body, payload, triggered))

    async def woocommerce_webhook(request: Request) -> JSONResponse:
        store = request.path_params["store"]
        body = b""
        try:
            body = await _read_body(request, limit)
            ctype = request.headers.get("content-type", "")
            if ctype.startswith("application/x-www-form-urlencoded") and \
                    body.startswith(b"webhook_id="):
                # WooCommerce pings a new webhook with its id; it must answer 2xx to be saved.
                return JSONResponse({"status": "ping"})
            secret = settings.woocommerce_secrets.get(store)
            if secret is None or not signature_matches(
                    secret, body, request.headers.get("x-wc-webhook-signature")):
                raise ApiError(401, "header X-WC-Webhook-Signature", "missing or does not match")
            _require_json(request)
            topic = _header(request, "x-wc-webhook-topic")
            payload = _json(body)
        except ApiError as err:
            return await _refuse("woocommerce", store, body, err)
        # Each delivery has an id; a body re-sent by hand has the same bytes, hence the digest.
        event_id = request.headers.get("x-wc-webhook-delivery-id", "").strip() or \
            "sha256:" + hashlib.sha256(body).hexdigest()
        triggered = parse_timestamp(payload.get("date_modified_gmt")) \
            if isinstance(payload, dict) else None
        return await _deliver(Delivery("woocommerce", store, event_id, topic, body, payload,
                                       triggered))

    def _store_for_token(auth: str) -> str | None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        found = None
        for store, secret in settings.store_secrets.items():  # compare all: constant time
            if hmac.compare_digest(secret.encode(), token.strip().encode()):
                found = store
        return found

    async def create_order(request: Request) -> JSONResponse:
        body = b""
        store = None
        try:
            body = await _read_body(request, limit)
            store = _store_for_token(request.headers.get("authorization", ""))
            if store is None:
                raise ApiError(401, "header Authorization", "missing or unknown store token")
            _require_json(request)
            key = _header(request, "idempotency-key")
            payload = _json(body)
        except ApiError as err:
            return await _refuse("native", store, body, err)
        return await _deliver(Delivery("native", store, key, "orders/create", body, payload))

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        # Not persisted, so not accepted: a 503 makes the store deliver it again later.
        log.error("database error while accepting a request: %s", type(exc).__name__)
        return JSONResponse({"error": "temporarily unavailable, retry later"}, status_code=503)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        writer.start()
        try:
            yield
        finally:
            await writer.stop()
            await batcher.stop()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/webhooks/shopify/{shop}", shopify_webhook, methods=["POST"]),
        Route("/webhooks/woocommerce/{store}", woocommerce_webhook, methods=["POST"]),
        Route("/orders", create_order, methods=["POST"]),
    ]
    from workers.exceptions_api import routes as exception_routes  # held at the door
    from workers.review_api import routes as review_routes  # the review desk

    routes.append(Mount("/review", routes=[*exception_routes, *review_routes]))
    from workers.health_page import routes as ops_routes  # the order-health page

    routes.append(Mount("/ops", routes=ops_routes))
    from workers.tracking_api import tracking_routes_for  # carrier tracking pushes

    routes.extend(tracking_routes_for(settings))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        OperationalError: database_down, DBAPIError: database_down, HTTPException: http_error})
    app.state.batcher = batcher
    app.state.settings = settings
    return app


def _configure_logging() -> None:
    # Refusals and errors at info and above; no request bodies, so no personal data.
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class NotReadyToServe(SystemExit):
    """The service must not start: the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(f"orderfleet serve: {message}")


def check_ready_to_serve(settings: Settings, host: str) -> None:
    """Refuse to start on a database without the current schema, or beyond loopback without
    the secrets that guard the endpoints which change orders or show customer data."""
    missing = []
    if host not in LOOPBACK_HOSTS:
        if settings.review_api_token is None:
            missing.append("ORDERFLEET_REVIEW_API_TOKEN (the review desk shows customer data "
                           "and approves or cancels orders)")
        if settings.carrier_webhook_secret is None:
            missing.append("ORDERFLEET_CARRIER_WEBHOOK_SECRET (carrier tracking pushes move "
                           "orders)")
    if missing:
        raise NotReadyToServe(f"listening on {host} (beyond loopback) needs "
                              + " and ".join(missing))
    pending = pending_revisions(settings)
    if pending:
        raise NotReadyToServe(f"the database lacks {len(pending)} schema migration(s): run "
                              "`orderfleet db upgrade` first")


def app_factory() -> Starlette:
    """For ``uvicorn --factory`` and multi-process serving: settings from the environment."""
    _configure_logging()
    return create_app(get_settings())


def serve(settings: Settings, host: str, port: int, *, workers: int = 1,
          access_log: bool = False) -> None:
    """Run the intake service in the foreground under uvicorn."""
    check_ready_to_serve(settings, host)
    _configure_logging()
    if workers > 1:
        # Each process builds its app from the same environment (settings are validated there).
        uvicorn.run("workers.api:app_factory", factory=True, host=host, port=port,
                    workers=workers, log_level="info", access_log=access_log)
    else:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                    access_log=access_log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the orderfleet HTTP intake service.")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    settings = get_settings()
    serve(settings, args.host or settings.api_host, args.port or settings.api_port,
          workers=args.workers)


if __name__ == "__main__":
    main()
