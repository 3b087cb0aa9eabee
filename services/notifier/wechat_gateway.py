"""Where WeChat messages go: the residents who appealed through the official account and left no
phone hear back there (`services.notifier.routing`). The same shape as the SMS gateways:

- `WeChatOutbox` (embedded mode, `WECHAT_GATEWAY=outbox`): a Redis list (newest first) and a log
  line with the openid masked; each message id taken once;
- `WeChatApiGateway` (`WECHAT_GATEWAY=api`): WeChat's customer-service message API (客服消息,
  `POST {base}/cgi-bin/message/custom/send?access_token=…`, a text message), with the access token
  from `{base}/cgi-bin/token`, kept in Redis until shortly before it expires and fetched again when
  WeChat says it expired or is invalid (errcode 40001, 40014, 42001). What is transient (HTTP 5xx,
  408, 429, timeouts, refused connections, WeChat's errcode -1 "system busy") is retried with the
  SMS gateway's backoff; what is not is permanent. WeChat lets an account write to a user only
  within 48 hours of the user's last message: past that, errcode 45015, the notice goes as the
  account's template message (`services.notifier.wechat_template`, `WECHAT_TEMPLATE_ID`), with the
  same token and retries; without a template, or when WeChat refuses that too (43004: no longer a
  follower), the message is `Undeliverable` (recorded `undelivered`, not retried: kept until the
  user writes to the account again, `services.notifier.pending`).

  wx:outbox               the embedded outbox (newest 100,000), `wx:outbox:id:{message_id}` 30 days
  wx:token:{app_id}       the access token, until WECHAT_TOKEN_MARGIN before WeChat expires it

WeChat takes no client reference: a notifier killed between WeChat's answer and the record of it
sends that message again when the event is read again (an SMS provider drops the repeat by its
`client_ref`; a WeChat user sees it twice). The access token and the AppSecret travel in URLs:
httpx's request log, which prints URLs, is kept to warnings (`shared.runtime.configure_logging`),
and no error message here carries a URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx
from redis.asyncio import Redis

from services.notifier.gateway import (
    Message,
    OutboxGateway,
    PermanentSmsError,
    TransientSmsError,
    Undeliverable,
    backoff,
)
from services.notifier.wechat_template import WeChatTemplate, parse_fields, template_body
from shared import lookup_link
from shared.redis_client import text
from shared.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_BASE = "https://api.weixin.qq.com"
# The token is fetched again this long before WeChat says it expires (7,200 s): a send never
# carries a token that runs out on its way.
TOKEN_MARGIN = 300
# WeChat's errcodes that say the token we sent is no good (invalid, expired, malformed): fetch a
# new one and send again, once.
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
BUSY = -1  # "系统繁忙，此时请开发者稍候再试"
OUTSIDE_WINDOW = 45015  # "response out of time limit": the user's last message is over 48 hours old


class _Refused(PermanentSmsError):
    """WeChat's errcode for a message it will not take as it is (the caller words it)."""

    def __init__(self, code: int, errmsg: str) -> None:
        super().__init__(f"errcode {code} {errmsg}")
        self.code = code


class WeChatGateway(Protocol):
    async def send(self, message: Message) -> str:
        """Hand the message over; returns an id for it. Raises `SmsError` if not taken."""
        ...


class WeChatOutbox(OutboxGateway):
    """Embedded mode: the 'sent' WeChat messages are a Redis list (newest first), as WeChat's API
    would be called (`touser`, the text), and a log line with the openid masked."""

    KEY = "wx:outbox"
    TO = "openid"
    WHAT = "WeChat"

    def record(self, message: Message) -> dict[str, Any]:
        return {
            "openid": message.to,
            "text": message.text,
            "kind": message.kind,
            "ticket_no": message.ticket_no,
            "message_id": message.message_id,
            "created_at": message.created_at.isoformat(),
        }


class WeChatApiGateway:
    """WeChat's customer-service messages (客服消息), text only, to one openid each."""

    def __init__(
        self,
        redis: Redis,
        app_id: str,
        secret: str,
        *,
        base: str = DEFAULT_BASE,
        attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        timeout: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        template: WeChatTemplate | None = None,
    ) -> None:
        if not app_id or not secret:
            raise ValueError(
                "WECHAT_GATEWAY=api needs WECHAT_APP_ID and WECHAT_APP_SECRET (the account's AppSecret)"
            )
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"WECHAT_API_BASE {base!r}: expected an http(s) URL (https://api.weixin.qq.com)")
        self.redis = redis
        self.app_id = app_id
        self.secret = secret
        self.base = base.rstrip("/")
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        # Past the 48 hours, the notice as this template message (None: undelivered).
        self.template = template
        self.client = httpx.AsyncClient(timeout=timeout)
        self.token_key = f"wx:token:{app_id}"
        self._refreshing = asyncio.Lock()  # one fetch at a time in this process

    async def send(self, message: Message) -> str:
        custom = {"touser": message.to, "msgtype": "text", "text": {"content": message.text}}
        try:
            await self._call("/cgi-bin/message/custom/send", custom)
        except _Refused as e:
            if e.code != OUTSIDE_WINDOW:
                raise PermanentSmsError(f"WeChat refused the message: {e}") from None
            body = template_body(message, self.template) if self.template else None
            if body is None:
                raise Undeliverable(
                    f"WeChat errcode {e.code}: the user has not written to the account in the last "
                    "48 hours, so no customer-service message reaches them"
                ) from None
            try:
                await self._call("/cgi-bin/message/template/send", body)
            except _Refused as t:
                # 43004 (no longer a follower), 40037 (a template id WeChat does not know), …: no
                # retry changes that; the state keeps the reason.
                raise Undeliverable(
                    f"WeChat errcode 45015 (past the 48 hours), and the template message was refused too: {t}"
                ) from None
            log.info(
                "WeChat %s for %s to %s sent as a template message (past the 48 hours)",
                message.kind, message.ticket_no, message.masked_to,
            )  # fmt: skip
        return message.message_id  # WeChat names no message: ours stands for it

    async def _call(self, path: str, body: dict[str, Any]) -> None:
        """One POST of WeChat's message API, with the token and its renewal, and the retries of
        what may pass. Raises `_Refused` for an errcode that will not change, TransientSmsError
        when WeChat stayed unavailable, PermanentSmsError for the token or an HTTP 4xx."""
        token = await self._with_retries(self.token)
        failures, renewed, last = 0, False, ""
        while True:
            try:
                answer = await self._post(f"{self.base}{path}", token, body)
            except TransientSmsError as e:
                last = str(e)
            else:
                code = _errcode(answer)
                if code == 0:
                    return
                if code in TOKEN_ERRORS:
                    # Expired early, or replaced (a fetch elsewhere): a new one, and again at once.
                    # The first renewal is free; a token refused again counts as a failure.
                    token = await self._with_retries(partial(self.token, stale=token))
                    last = f"errcode {code} {_errmsg(answer)}"
                    if not renewed:
                        renewed = True
                        continue
                elif code != BUSY:
                    raise _Refused(code, _errmsg(answer))
                else:
                    last = f"errcode {code} {_errmsg(answer)}"
            failures += 1
            if failures >= self.attempts:
                raise TransientSmsError(f"WeChat unavailable after {self.attempts} attempts ({last})")
            await self.sleep(backoff(failures, self.base_delay, self.max_delay))

    async def token(self, *, stale: str | None = None) -> str:
        """The access token: the one kept in Redis, unless it is `stale` (WeChat refused it), in
        which case a new one is fetched. Raises TransientSmsError (WeChat down: try again) or
        PermanentSmsError (the AppID or AppSecret is wrong, or this server's address is not on the
        account's IP allow-list)."""
        cached = await self.redis.get(self.token_key)
        if cached is not None and text(cached) != stale:
            return text(cached)
        async with self._refreshing:
            cached = await self.redis.get(self.token_key)  # fetched meanwhile by another send?
            if cached is not None and text(cached) != stale:
                return text(cached)
            try:
                r = await self.client.get(
                    f"{self.base}/cgi-bin/token",
                    params={"grant_type": "client_credential", "appid": self.app_id, "secret": self.secret},
                )
            except httpx.TimeoutException:
                raise TransientSmsError("WeChat token: timeout") from None
            except httpx.TransportError as e:
                raise TransientSmsError(f"WeChat token: connection error: {type(e).__name__}") from None
            answer = _json(r)
            if not r.is_success:
                raise _http_error("WeChat token", r)
            token, expires_in = answer.get("access_token"), answer.get("expires_in")
            if not token:
                code = _errcode(answer)
                if code == BUSY:
                    raise TransientSmsError("WeChat token: errcode -1 (system busy)")
                raise PermanentSmsError(f"WeChat refused the token: errcode {code} {_errmsg(answer)}")
            ttl = max(60, int(expires_in or 7200) - TOKEN_MARGIN)
            await self.redis.set(self.token_key, str(token), ex=ttl)
            return str(token)

    async def _post(self, url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
        """WeChat's JSON answer; TransientSmsError for what may pass, PermanentSmsError for a 4xx."""
        try:
            r = await self.client.post(url, params={"access_token": token}, json=body)
        except httpx.TimeoutException:
            raise TransientSmsError("timeout") from None
        except httpx.TransportError as e:
            raise TransientSmsError(f"connection error: {type(e).__name__}") from None
        if not r.is_success:
            raise _http_error("WeChat", r)
        return _json(r)

    async def _with_retries(self, fetch: Callable[[], Awaitable[str]]) -> str:
        """The token, retried as a send is when WeChat's token endpoint fails for a moment."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await fetch()
            except TransientSmsError:
                if attempt == self.attempts:
                    raise
            await self.sleep(backoff(attempt, self.base_delay, self.max_delay))
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self.client.aclose()


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        answer = r.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _errcode(answer: dict[str, Any]) -> int:
    try:
        return int(answer.get("errcode", 0))
    except (TypeError, ValueError):
        return BUSY  # an answer we cannot read: as if busy (retried, then held)


def _errmsg(answer: dict[str, Any]) -> str:
    return str(answer.get("errmsg", ""))[:200]


def _http_error(what: str, r: httpx.Response) -> PermanentSmsError | TransientSmsError:
    if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
        return PermanentSmsError(f"{what}: HTTP {r.status_code}")
    return TransientSmsError(f"{what}: HTTP {r.status_code}")


def make_wechat_gateway(settings: Settings, redis: Redis) -> WeChatGateway:
    """Raises ValueError naming the setting that is missing or wrong."""
    if settings.wechat_gateway == "api":
        template = None
        if settings.wechat_template_id:
            template = WeChatTemplate(
                settings.wechat_template_id,
                parse_fields(settings.wechat_template_fields),
                ZoneInfo(settings.timezone),
                lookup_link.check_page(settings.wechat_template_url),
                # The link opens the message's own ticket: a WeChat appeal has no phone digits to
                # look it up by.
                link_query=partial(
                    lookup_link.params,
                    days=settings.lookup_link_days,
                    key=lookup_link.link_key(settings.caller_id_salt),
                ),
            )
        return WeChatApiGateway(
            redis,
            settings.wechat_app_id,
            settings.wechat_app_secret,
            base=settings.wechat_api_base,
            attempts=settings.sms_gateway_attempts,
            template=template,
        )
    return WeChatOutbox(redis)
