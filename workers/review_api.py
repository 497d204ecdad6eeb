"""The review desk over HTTP (JSON), mounted under ``/review`` by ``orderfleet serve``.

    GET  /review/orders                      waiting orders, oldest first
                                             (?limit=100&store=...&overdue=1)
    GET  /review/orders/{id}                 one order with everything a reviewer needs
    POST /review/orders/{id}/approve         {"by": "...", "reason": "..."}: resume at reservation
    POST /review/orders/{id}/cancel          {"by": "...", "reason": "..."}: cancel, release stock
    POST /review/orders/{id}/address         {"by": "...", "address": {...}}: correct the
                                             shipping address of an order not yet reserved
    GET  /review/decisions                   latest decisions (who, when, why)

``{id}`` is the store's order id or the internal id (``?store=`` disambiguates). When
``ORDERFLEET_REVIEW_API_TOKEN`` is set every request needs ``Authorization: Bearer <token>``.
Errors are JSON ``{"error": ..., "field": ...}`` with 401, 404, 409 (not on hold) or 422.
The database work runs in Starlette's thread pool; the event loop never waits on it.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from config.settings import Settings, get_settings
from domain.db import UnitOfWork, unit_of_work
from domain.review import (
    Decision,
    InvalidDecision,
    ReviewError,
    approve_order,
    cancel_order,
    correct_address,
    pending_reviews,
    recent_decisions,
    review_detail,
)

MAX_BODY_BYTES = 64 * 1024


class DecideFn(Protocol):
    """``approve_order`` or ``cancel_order``: who and why come straight from the request."""

    def __call__(self, uow: UnitOfWork, ref: str, *, by: Any, reason: Any,
                 store: str | None = None) -> Decision: ...


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def _unauthorised(request: Request, settings: Settings) -> JSONResponse | None:
    token = settings.review_api_token
    if not token:
        return None
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                             token.encode()):
        return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    return None



async def json_object(request: Request, shape: str = "a JSON object") -> dict[str, Any] | Response:
    """The request body as a JSON object, or the error response to send instead (413 too large,
    400 not JSON, deep nesting included, 422 not an object)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:
        return _error(400, f"body is not JSON: {str(exc)[:200]}")
    if not isinstance(body, dict):
        return _error(422, f"body must be {shape}", "(body)")
    return body

def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidDecision(name, "must be an integer") from None
    if not low <= value <= high:
        raise InvalidDecision(name, f"must be between {low} and {high}")
    return value


async def list_orders(request: Request) -> Response:
    settings = get_settings()
    if (denied := _unauthorised(request, settings)) is not None:
        return denied
    try:
        limit = _int_param(request, "limit", 100, 1, 1000)
    except ReviewError as exc:
        return _error(exc.status, str(exc), getattr(exc, "field", None))
    overdue = request.query_params.get("overdue", "").lower() in ("1", "true", "yes")
    store = request.query_params.get("store") or None

    def work() -> list[dict[str, Any]]:
        with unit_of_work(settings) as uow:
            return pending_reviews(uow.session, settings, limit=limit, store=store,
                                   overdue_only=overdue)

    orders = await run_in_threadpool(work)
    return JSONResponse({"orders": orders, "count": len(orders)})


async def show_order(request: Request) -> Response:
    settings = get_settings()
    if (denied := _unauthorised(request, settings)) is not None:
        return denied
    ref = request.path_params["order_id"]
    store = request.query_params.get("store") or None

    def work() -> dict[str, Any] | None:
        with unit_of_work(settings) as uow:
            return review_detail(uow.session, settings, ref, store)

    detail = await run_in_threadpool(work)
    if detail is None:
        return _error(404, f"no order {ref}")
    return JSONResponse(detail)


async def _decide(request: Request, decide: DecideFn) -> Response:
    settings = get_settings()
    if (denied := _unauthorised(request, settings)) is not None:
        return denied
    body = await json_object(request, "a JSON object with by and reason")
    if isinstance(body, Response):
        return body
    ref = request.path_params["order_id"]
    store = request.query_params.get("store") or body.get("store") or None

    def work() -> dict[str, Any]:
        with unit_of_work(settings) as uow:
            decision = decide(uow, ref, by=body.get("by"), reason=body.get("reason"),
                              store=store)
        return decision.to_json()

    try:
        result = await run_in_threadpool(work)
    except ReviewError as exc:
        return _error(exc.status, str(exc), getattr(exc, "field", None))
    return JSONResponse(result)


async def approve(request: Request) -> Response:
    return await _decide(request, approve_order)


async def cancel(request: Request) -> Response:
    return await _decide(request, cancel_order)


async def address(request: Request) -> Response:
    settings = get_settings()
    if (denied := _unauthorised(request, settings)) is not None:
        return denied
    body = await json_object(request, "a JSON object with by and address")
    if isinstance(body, Response):
        return body
    ref = request.path_params["order_id"]
    store = request.query_params.get("store") or None

    def work() -> dict[str, Any]:
        with unit_of_work(settings) as uow:
            return correct_address(uow, ref, body.get("address"), by=body.get("by"),
                                   store=store)

    try:
        return JSONResponse(await run_in_threadpool(work))
    except ReviewError as exc:
        return _error(exc.status, str(exc), getattr(exc, "field", None))


async def decisions(request: Request) -> Response:
    settings = get_settings()
    if (denied := _unauthorised(request, settings)) is not None:
        return denied
    try:
        limit = _int_param(request, "limit", 100, 1, 1000)
    except ReviewError as exc:
        return _error(exc.status, str(exc), getattr(exc, "field", None))

    def work() -> list[dict[str, Any]]:
        with unit_of_work(settings) as uow:
            return recent_decisions(uow.session, limit=limit)

    rows = await run_in_threadpool(work)
    return JSONResponse({"decisions": rows, "count": len(rows)})


routes: list[BaseRoute] = [
    Route("/orders", list_orders, methods=["GET"]),
    Route("/orders/{order_id}", show_order, methods=["GET"]),
    Route("/orders/{order_id}/approve", approve, methods=["POST"]),
    Route("/orders/{order_id}/cancel", cancel, methods=["POST"]),
    Route("/orders/{order_id}/address", address, methods=["POST"]),
    Route("/decisions", decisions, methods=["GET"]),
]


def create_app() -> Starlette:
    """The desk on its own, mounted where ``orderfleet serve`` mounts it (``/review``)."""
    return Starlette(routes=[Mount("/review", routes=routes)])
