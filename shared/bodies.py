"""Request body limits, applied before the application reads a byte of the body.

A limit is chosen by the request path (the longest matching prefix, else the default; a `*` in a
prefix stands for one path segment, such as a ticket number). A declared Content-Length over it is
answered 413 at once, without reading; a body sent without one is counted as it arrives and cut off
at the limit. The 413 carries the API's error shape and a Chinese message saying what to do."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.http import api_error


@dataclass(frozen=True)
class Limit:
    max_bytes: int
    message: str  # what the client should do instead, in Chinese


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without a Content-Length runs over its limit. An
    HTTPException, so that FastAPI's body reading passes it on to the error handler unchanged."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


def too_large(limit: Limit) -> str:
    return f"请求内容过大（上限{human(limit.max_bytes)}）。{limit.message}"


def human(n: int) -> str:
    return f"{n // (1024 * 1024)} MB" if n >= 1024 * 1024 else f"{n // 1024} KB"


class BodyLimits:
    """ASGI middleware: the body of a request to `path` may be at most its limit."""

    def __init__(self, app: ASGIApp, *, default: Limit, by_prefix: Mapping[str, Limit]) -> None:
        self.app = app
        self.default = default
        self.by_prefix = [
            (re.compile(re.escape(prefix).replace(r"\*", "[^/]+")), limit)
            for prefix, limit in sorted(by_prefix.items(), key=lambda kv: -len(kv[0]))
        ]

    def limit_for(self, path: str) -> Limit:
        return next((limit for prefix, limit in self.by_prefix if prefix.match(path)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and (declared < 0 or declared > limit.max_bytes):
            response = api_error(413, "too_large", too_large(limit), field="body")
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise BodyTooLarge(too_large(limit))
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1  # not a length: refused like an oversized one
    return None
