"""The API's one error shape: {"error": code, "message": 给人看的原因, "field": which input, ...}.

Every view builds its error responses here, so clients parse one format."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from shared.errors import DomainError


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


# One place maps a domain error's kind to an HTTP status.
STATUS_BY_KIND: dict[str, int] = {
    "invalid": 422,
    "not_found": 404,
    "forbidden": 403,
    "conflict": 409,
    "unavailable": 503,
    "too_many": 429,
    "unreadable": 400,
    "unauthorized": 401,
    "too_large": 413,
}


def domain_error(error: DomainError, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """The response for a refused request (see `shared.errors`), with Retry-After when it says when."""
    if error.retry_after is not None:
        headers = {"Retry-After": str(error.retry_after), **(headers or {})}
    return api_error(
        STATUS_BY_KIND[error.kind], error.code, error.message, field=error.field, headers=headers
    )
