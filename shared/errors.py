"""Domain errors: what went wrong, as a code for programs and a sentence for people (in Chinese).

Pure code raises these; it knows nothing of HTTP. The views map a code's kind to a status in one
place (`shared.http.STATUS_BY_KIND`), so a rule change never needs a view change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

# What kind of refusal it is; the HTTP status follows from the kind.
ErrorKind = Literal[
    "invalid",
    "not_found",
    "forbidden",
    "conflict",
    "unavailable",
    "too_many",
    "unreadable",
    "unauthorized",
    "too_large",
]


class DomainError(Exception):
    """A request the domain refuses. `code` names the reason for programs, `message` says it to
    a person in words they can act on, `field` names the input at fault when there is one."""

    kind: ErrorKind = "conflict"
    # Seconds after which a retry may succeed (rate limits, a store or broker away): Retry-After.
    retry_after: int | None = None

    def __init__(
        self,
        code: str,
        message: str,
        *,
        kind: ErrorKind | None = None,
        field: str | None = None,
        also: Sequence[DomainError] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        # The request's other fields at fault, found by the same check: a form's every mistake is
        # said at once (the response's `problems`), not one per submit.
        self.also = tuple(also)
        if kind is not None:
            self.kind = kind


class Unavailable(DomainError):
    """A store or the broker cannot be reached just now (503 with Retry-After)."""

    kind = "unavailable"
    retry_after = 5

    def __init__(self) -> None:
        super().__init__("unavailable", "系统繁忙，请稍后重试")
