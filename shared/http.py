"""The API's one error shape: {"error": code, "message": 给人看的原因, "field": which input, ...}.

Every view builds its error responses here, so clients parse one format."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def api_error(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    content: dict[str, Any] = {"error": code}
    if field is not None:
        content["field"] = field
    content["message"] = message
    content.update(extra)
    return JSONResponse(status_code=status, content=content, headers=headers)
