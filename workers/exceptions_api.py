"""The exceptions desk over HTTP (JSON), mounted with the review desk under ``/review``.

    GET  /review/exceptions                  held deliveries, oldest first
                                             (?status=open|replayed|superseded|dropped|all,
                                              ?store=..., ?limit=100)
    GET  /review/exceptions/{id}             one: failing fields, the body as received
    POST /review/exceptions/{id}/replay      {"by": "...", "corrections": {...native fields}}
    POST /review/exceptions/{id}/drop        {"by": "...", "reason": "..."}

Authenticated like the review desk (``ORDERFLEET_REVIEW_API_TOKEN`` as a Bearer token).
Errors are JSON ``{"error": ..., "errors": [...]}`` with 401, 404, 409 (not open) or 422.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from config.settings import get_settings
from domain.db import UnitOfWork, unit_of_work
from domain.intake_exceptions import (
    STATUSES,
    ExceptionDeskError,
    drop_exception,
    exception_detail,
    list_exceptions,
)
from tasks.intake import replay_exception
from workers.review_api import _error, _unauthorised, json_object


def _desk_error(exc: ExceptionDeskError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "errors": exc.errors}, status_code=exc.status)


def _exception_id(request: Request) -> int | None:
    raw = request.path_params["exception_id"]
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


async def list_held(request: Request) -> Response:
    settings = get_settings()
    if (denied := _unauthorised(request, settings)) is not None:
        return denied
    status = request.query_params.get("status", "open")
    if status not in (*STATUSES, "all"):
        return _error(422, f"status must be one of {(*STATUSES, 'all')}", "status")
    raw_limit = request.query_params.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        return _error(422, "limit must be between 1 and 1000", "limit")
    store = request.query_params.get("store") or None

    def work() -> list[dict[str, Any]]:
        with unit_of_work(settings) as uow:
            return list_exceptions(uow.session, status=None if status == "all" else status,
                                   store=store, limit=int(raw_limit))

    rows = await run_in_threadpool(work)
    return JSONResponse({"exceptions": rows, "count": len(rows)})


async def show_held(request: Request) -> Response:
    settings = get_settings()
    if (denied := _unauthorised(request, settings)) is not None:
        return denied
    exception_id = _exception_id(request)
    if exception_id is None:
        return _error(404, "no such exception")

    def work() -> dict[str, Any]:
        with unit_of_work(settings) as uow:
            return exception_detail(uow.session, exception_id)

    try:
        return JSONResponse(await run_in_threadpool(work))
    except ExceptionDeskError as exc:
        return _desk_error(exc)


async def _act(request: Request, act: Callable[[UnitOfWork, int, dict[str, Any]],
                                                dict[str, Any]]) -> Response:
    settings = get_settings()
    if (denied := _unauthorised(request, settings)) is not None:
        return denied
    exception_id = _exception_id(request)
    if exception_id is None:
        return _error(404, "no such exception")
    body = await json_object(request)
    if isinstance(body, Response):
        return body

    def work() -> dict[str, Any]:
        with unit_of_work(settings) as uow:
            return act(uow, exception_id, body)

    try:
        return JSONResponse(await run_in_threadpool(work))
    except ExceptionDeskError as exc:
        return _desk_error(exc)


async def replay(request: Request) -> Response:
    settings = get_settings()
    return await _act(request, lambda uow, i, body: replay_exception(
        uow, i, settings, by=body.get("by"), corrections=body.get("corrections")))


async def drop(request: Request) -> Response:
    return await _act(request, lambda uow, i, body: drop_exception(
        uow.session, i, by=body.get("by"), reason=body.get("reason")))


routes: list[BaseRoute] = [
    Route("/exceptions", list_held, methods=["GET"]),
    Route("/exceptions/{exception_id}", show_held, methods=["GET"]),
    Route("/exceptions/{exception_id}/replay", replay, methods=["POST"]),
    Route("/exceptions/{exception_id}/drop", drop, methods=["POST"]),
]
