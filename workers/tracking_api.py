"""Carrier tracking pushes over HTTP: ``POST /webhooks/tracking``, mounted by ``orderfleet
serve`` (``workers.api``) from :data:`tracking_routes`.

Accepts an EasyPost webhook Event (``tracker.created`` / ``tracker.updated``), or trackers in
our own format (``{"tracking_number", "status", "events"}`` or ``{"trackers": [...]}``).
With ``carrier_webhook_secret`` set, the body must carry EasyPost's signature header,
``X-Hmac-Signature: hmac-sha256-hex=<HMAC-SHA256 of the body>``. A push that cannot be used
is answered 422 naming the fields and kept in ``rejected_tracking_pushes``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import unicodedata
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from config.settings import Settings, get_settings
from domain.db import unit_of_work

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hmac-Signature"
MAX_BODY_BYTES = 5 * 1024 * 1024


def signature(secret: str, body: bytes) -> str:
    """The header value a carrier sends: EasyPost normalises the secret with NFKD."""
    key = unicodedata.normalize("NFKD", secret).encode()
    return "hmac-sha256-hex=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _verified(settings: Settings, request: Request, body: bytes) -> bool:
    if settings.carrier_webhook_secret is None:
        return True
    sent = request.headers.get(SIGNATURE_HEADER, "")
    return hmac.compare_digest(sent, signature(
        settings.carrier_webhook_secret.get_secret_value(), body))


def handle_push(settings: Settings, raw: bytes) -> tuple[int, dict[str, Any]]:
    """Record (or keep as rejected) one push; returns (HTTP status, JSON body)."""
    from tasks.tracking import TrackingPushError, ingest_tracking_push, keep_rejected_push

    text = raw.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        errors = [{"field": "(body)", "message": f"not JSON ({exc.msg})"}]
        with unit_of_work(settings) as uow:
            keep_rejected_push(uow, text, "body is not JSON", errors)
        return 400, {"error": "body is not JSON", "errors": errors}
    try:
        with unit_of_work(settings) as uow:
            out = ingest_tracking_push(uow, payload)
    except TrackingPushError as exc:
        with unit_of_work(settings) as uow:
            rejected_id = keep_rejected_push(uow, text, str(exc), exc.errors)
        return 422, {"error": str(exc), "errors": exc.errors, "rejected_id": rejected_id}
    return 200, {"trackers": out.trackers, "new_events": out.new_events,
                 "unknown_tracking_numbers": out.unknown_tracking_numbers}


def tracking_routes_for(settings: Settings | None = None) -> list[Route]:
    """The push route; ``settings`` default to the process's (read at each request)."""

    async def tracking_push(request: Request) -> JSONResponse:
        s = settings or get_settings()
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        if not _verified(s, request, body):
            log.warning("tracking push with a missing or wrong %s refused", SIGNATURE_HEADER)
            return JSONResponse({"error": f"{SIGNATURE_HEADER}: missing or wrong signature"},
                                status_code=401)
        status, out = await run_in_threadpool(handle_push, s, body)
        return JSONResponse(out, status_code=status)

    return [Route("/webhooks/tracking", tracking_push, methods=["POST"])]


tracking_routes = tracking_routes_for()
