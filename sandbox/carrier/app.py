"""The sandbox carrier's ASGI app: its books, its fault profile and its routes, wired once."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.carrier.admin import SandboxAdmin
from sandbox.carrier.books import CarrierState
from sandbox.carrier.easypost import EasyPostApi
from sandbox.carrier.errors import BadRequest, json_error
from sandbox.carrier.faults import FaultProfile
from sandbox.carrier.native import NativeApi
from sandbox.carrier.pusher import PusherSlot, TrackingPusher


def create_app(
    time_scale: float = 1.0,
    seed: int = 0,
    *,
    failed_attempt_rate: float = 0.0,
    clock: Callable[[], float] = time.time,
    faults: FaultProfile | None = None,
    easypost_api_key: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    webhook_interval_s: float = 1.0,
) -> Starlette:
    """Build the sandbox carrier.

    ``time_scale`` is carrier seconds per real second (3600: one carrier hour per second).
    ``seed`` makes tracking numbers, label ids and fault draws reproducible.
    ``failed_attempt_rate`` (0..1) is the share of parcels that miss their first delivery round
    (off by default, so a parcel's timeline is exactly the documented one). ``clock`` (epoch
    seconds) is injectable for tests. ``faults`` is the fault profile to start with.
    ``easypost_api_key``: the key the EasyPost dialect (``/v2``) accepts (any when None).
    ``webhook_url``: where to push tracking changes (see :class:`TrackingPusher`).
    """
    if not time_scale > 0:
        raise ValueError("time_scale must be positive")
    if not 0.0 <= failed_attempt_rate <= 1.0:
        raise ValueError("failed_attempt_rate must be within 0..1")
    state = CarrierState(
        time_scale=time_scale, seed=seed, failed_attempt_rate=failed_attempt_rate, clock=clock
    )
    if faults is not None:
        faults.validate()
        state.set_faults(faults)
    pushers = PusherSlot()
    if webhook_url:
        pushers.replace(TrackingPusher(state, webhook_url, webhook_secret, webhook_interval_s))

    app = Starlette(
        routes=[
            Route("/healthz", _healthz, methods=["GET"]),
            *NativeApi(state).routes(),
            *SandboxAdmin(state, pushers).routes(),
            *EasyPostApi(state, easypost_api_key).routes(),
        ],
        exception_handlers={BadRequest: _bad_request, HTTPException: _http_error},
    )
    app.state.carrier = state  # for in-process inspection (tests, debugging)
    app.state.stop_pushing = pushers.stop
    return app


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BadRequest)
    return json_error(exc.message, exc.status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette answers unknown routes in plain text; clients here always expect JSON.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
