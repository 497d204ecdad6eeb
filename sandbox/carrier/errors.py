"""How the sandbox carrier refuses a request: one exception, one JSON error body."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


class BadRequest(Exception):
    """A request the carrier refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def json_error(message: str, status: int) -> JSONResponse:
    """The carrier's error body, ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status)


async def json_body(request: Request) -> Any:
    """The request's JSON body; a BadRequest (400) when it is not JSON."""
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("body is not valid JSON", status=400) from exc
