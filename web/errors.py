"""One error shape for every REST response: ``{"error": {"code", "message", ...}}`` with a stable code."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = ["ApiError", "error_body"]


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


class ApiError(web.HTTPException):
    """Raise from a handler: ``raise ApiError(400, "invalid_filter", "...", position=12)``."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        self.status_code = status
        super().__init__(
            headers=headers,
            text=orjson.dumps(error_body(code, message, **extra)).decode(),
            content_type="application/json",
        )
        self.code = code
