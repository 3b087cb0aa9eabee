"""The API's one error shape: {"error": code, "message": 给人看的原因, "field": which input, ...}.

Every view builds its error responses here, so clients parse one format."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shared.errors import DomainError
from shared.tickets import TICKET_NO_PATTERN


def api_error(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    content: dict[str, Any] = {"error": code, "field": field, "message": message}  # field: null if none
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
    # Several fields at fault: each in `problems` (the first is also the error itself), the shape
    # of the intake preview's.
    extra = (
        {
            "problems": [
                {"error": e.code, "field": e.field, "message": e.message} for e in (error, *error.also)
            ]
        }
        if error.also
        else {}
    )
    return api_error(
        STATUS_BY_KIND[error.kind], error.code, error.message, field=error.field, headers=headers, **extra
    )


# Statuses the framework itself raises (an unknown path, a wrong method, a body over its limit) and
# those raised as HTTPException (authentication): the code and, without a detail, the sentence.
_HTTP_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "请求无法解析，请检查格式"),
    401: ("unauthorized", "需要登录凭证：请在请求头加 Authorization: Bearer <token>"),
    403: ("forbidden", "无权执行此操作"),
    404: ("not_found", "请求的地址不存在，请检查路径"),
    405: ("method_not_allowed", "该地址不支持此请求方法"),
    413: ("too_large", "请求内容过大"),
    415: ("unsupported_media_type", "不支持的内容类型"),
    422: ("invalid_request", "请求内容不符合要求"),
    429: ("rate_limited", "请求过于频繁，请稍后再试"),
    503: ("unavailable", "系统繁忙，请稍后重试"),
}


# What a request schema's constraint asks of a value, in words for whoever fills it in, by
# pydantic's error type (its `ctx` holds the bound). Other types keep pydantic's English message.
_SCHEMA_WORDS: dict[str, str] = {
    "greater_than_equal": "不能小于{ge}",
    "less_than_equal": "不能大于{le}",
    "greater_than": "须大于{gt}",
    "less_than": "须小于{lt}",
    "string_too_long": "不能超过{max_length}个字",
    "string_too_short": "至少{min_length}个字",
    "too_long": "最多{max_length}项",
    "too_short": "至少{min_length}项",
    "int_parsing": "须为整数",
    "int_type": "须为整数",
    "int_from_float": "须为整数",
    "float_parsing": "须为数字",
    "float_type": "须为数字",
    "bool_parsing": "须为true或false",
    "missing": "必须填写",
}


def schema_words(error: Mapping[str, Any]) -> str | None:
    """What one of pydantic's validation errors asks of the value, in Chinese (不能大于30), or None
    for an error type without words here."""
    words = _SCHEMA_WORDS.get(str(error.get("type")))
    if words is None:
        return None
    try:
        return words.format(**(error.get("ctx") or {}))
    except (KeyError, IndexError):  # a constraint without the bound the words name
        return None


def http_exception(exc: HTTPException) -> JSONResponse:
    """An HTTPException (the framework's, or authentication's) in the one error shape."""
    code, default = _HTTP_ERRORS.get(exc.status_code, ("error", "请求未能完成"))
    message = exc.detail if isinstance(exc.detail, str) and _is_ours(exc.detail) else default
    field = {401: "authorization", 413: "body"}.get(exc.status_code)
    return api_error(exc.status_code, code, message, field=field, headers=dict(exc.headers or {}) or None)


def _is_ours(detail: str) -> bool:
    """A detail written for people here (Chinese), not the framework's English status phrase."""
    return any("\u4e00" <= ch <= "\u9fff" for ch in detail)


# Every path parameter that names something in a store is checked against its pattern before a view
# builds a key from it: a ticket number, a department, a meeting. Others are checked by their views.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PATH_PATTERNS: dict[str, re.Pattern[str]] = {
    "ticket_no": re.compile(TICKET_NO_PATTERN),
    "dept_id": _ID,
    "meeting_id": _ID,
    "entry_id": _ID,
    "token_id": re.compile(r"[0-9a-f]{16}"),  # a token's id (a prefix of its hash), never a token
}


class NoSuchPath(DomainError):
    kind = "not_found"

    def __init__(self, name: str, value: str) -> None:
        super().__init__(
            "not_found", f"{value[:40]!r}不是有效的{_NAMES.get(name, name)}，请检查地址", field=name
        )


_NAMES = {
    "ticket_no": "工单号（如20261130-000001）",
    "dept_id": "单位编号",
    "meeting_id": "会议编号",
    "entry_id": "知识库条目编号",
    "token_id": "凭证编号（16位）",
}


async def valid_path_params(request: Request) -> None:
    """An app-wide dependency: a malformed identifier in the path names nothing (404)."""
    for name, value in request.path_params.items():
        pattern = PATH_PATTERNS.get(name)
        if pattern is not None and not pattern.fullmatch(value):
            raise NoSuchPath(name, value)


def multipart_schema(field: str, file_schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of an upload endpoint that reads its form itself (so FastAPI cannot
    describe it): one required field, `file_schema` the file's (or files') schema."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [field], "properties": {field: file_schema}}
                }
            },
        }
    }
