"""Why intake refuses a submission, as domain errors (`shared.errors.DomainError`): pure code raises
them, the views turn them into responses with `shared.http.domain_error`, the kind deciding the
status. Messages are for operators and residents, in Chinese, and say what to do."""

from __future__ import annotations

from shared.errors import DomainError


class InvalidAppeal(DomainError):
    """A field the caller must correct (422 through the API, a reply text on WeChat)."""

    kind = "invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__("invalid_appeal", message, field=field)


class BadRequest(DomainError):
    """A body that cannot be read at all: not UTF-8, not JSON, not a CSV or XLSX file (400)."""

    kind = "unreadable"

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__("bad_request", message, field=field)


class RateLimited(DomainError):
    """Too many submissions from one caller or client; `retry_after` seconds until the window ends."""

    kind = "too_many"

    def __init__(self, retry_after: int, message: str) -> None:
        super().__init__("rate_limited", message)
        self.retry_after = retry_after


class BrokerUnavailable(DomainError):
    """The appeal could not be durably written (the broker did not acknowledge): retry later."""

    kind = "unavailable"
    retry_after = 5

    def __init__(self, detail: str = "") -> None:
        super().__init__("unavailable", "系统繁忙，诉求未能保存，请稍后重试（不会重复登记）")
        self.detail = detail  # for the log, never shown to the client


class TooLarge(DomainError):
    """An upload over one of its limits (413): the message says to split it."""

    kind = "too_large"

    def __init__(self, message: str) -> None:
        super().__init__("too_large", message, field="file")


class KeyReused(DomainError):
    """An idempotency key that came before with another body: the new appeal would be dropped
    silently if the first ticket were returned, so it is refused with the reason (422)."""

    kind = "invalid"

    def __init__(self, ticket_no: str) -> None:
        super().__init__(
            "idempotency_key_reused",
            f"该Idempotency-Key已用于另一份内容不同的诉求（工单号{ticket_no}）。"
            "重试请原样重发同一内容；登记新的诉求请换一个新的Idempotency-Key",
            field="Idempotency-Key",
        )
        self.ticket_no = ticket_no
