"""The sandbox's own controls (not a carrier's API): stats, reset, live faults, the webhook."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.carrier.books import CarrierState
from sandbox.carrier.errors import BadRequest, json_body
from sandbox.carrier.faults import FaultProfile
from sandbox.carrier.pusher import PusherSlot, TrackingPusher


class SandboxAdmin:
    """``/v1/stats``, ``/v1/reset``, ``/v1/admin/faults`` and ``/v1/admin/webhook``."""

    def __init__(self, state: CarrierState, pushers: PusherSlot) -> None:
        self.state, self.pushers = state, pushers

    def routes(self) -> list[Route]:
        return [
            Route("/v1/stats", self.stats, methods=["GET"]),
            Route("/v1/admin/books", self.books, methods=["GET"]),
            Route("/v1/reset", self.reset, methods=["POST"]),
            Route("/v1/admin/faults", self.get_faults, methods=["GET"]),
            Route("/v1/admin/faults", self.put_faults, methods=["PUT"]),
            Route("/v1/admin/faults", self.delete_faults, methods=["DELETE"]),
            Route("/v1/admin/webhook", self.get_webhook, methods=["GET"]),
            Route("/v1/admin/webhook", self.put_webhook, methods=["PUT"]),
        ]

    async def stats(self, request: Request) -> JSONResponse:
        with self.state.lock:
            return JSONResponse(dict(vars(self.state.stats)))

    async def books(self, request: Request) -> JSONResponse:
        """Labels charged and not voided, per shipper reference: a reference charged twice is a
        parcel that got two labels, whatever the shipper's own records say."""
        with self.state.lock:
            per_reference: dict[str, int] = {}
            for label in self.state.by_id.values():
                if label.voided_ts is None:
                    ref = label.request.reference
                    per_reference[ref] = per_reference.get(ref, 0) + 1
        twice = {ref: n for ref, n in per_reference.items() if n > 1}
        return JSONResponse({"labels": sum(per_reference.values()),
                             "references": len(per_reference),
                             "references_charged_twice": twice,
                             "per_reference": per_reference})

    async def reset(self, request: Request) -> JSONResponse:
        self.state.reset()
        return JSONResponse({"ok": True})

    async def get_faults(self, request: Request) -> JSONResponse:
        with self.state.lock:
            return JSONResponse(self.state.active_faults().to_json())

    async def put_faults(self, request: Request) -> JSONResponse:
        profile = FaultProfile.from_json(await json_body(request))
        with self.state.lock:
            self.state.set_faults(profile)
        return JSONResponse(profile.to_json())

    async def delete_faults(self, request: Request) -> JSONResponse:
        with self.state.lock:
            self.state.set_faults(FaultProfile())
        return JSONResponse(FaultProfile().to_json())

    async def get_webhook(self, request: Request) -> JSONResponse:
        current = self.pushers.current
        return JSONResponse({"url": current.url if current else None,
                             "signed": bool(current and current.secret),
                             "interval_s": current.interval_s if current else None})

    async def put_webhook(self, request: Request) -> JSONResponse:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("webhook: must be a JSON object")
        url = body.get("url")
        if url is None:
            self.pushers.replace(None)
        else:
            secret, interval = body.get("secret"), body.get("interval_s", 1.0)
            if not isinstance(url, str):
                raise BadRequest("url: must be a string")
            if secret is not None and not isinstance(secret, str):
                raise BadRequest("secret: must be a string")
            if isinstance(interval, bool) or not isinstance(interval, (int, float)):
                raise BadRequest("interval_s: must be a number")
            self.pushers.replace(TrackingPusher(self.state, url, secret, float(interval)))
        return await self.get_webhook(request)
