"""Where SMS go (and, through the same shapes, WeChat messages: `services.notifier.wechat_gateway`).
`SmsGateway` is the interface:

- `OutboxGateway` (embedded mode) keeps every message in a Redis list (newest first) and logs it with
  the phone masked; like a provider given a client reference, it takes each message id once;
- `HttpSmsGateway` posts to a provider's HTTP endpoint, retrying with exponential backoff on what is
  transient (5xx, 429, timeouts, refused connections) and giving up at once on what is not (other 4xx).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx
import orjson
from redis.asyncio import Redis

from services.notifier.routing import Channel, masked
from shared.events import new_id, now_utc
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """A message to one resident (or a supervisor), by SMS or by WeChat. `to` is its address on
    `channel`: the phone for SMS, the openid for WeChat (`services.notifier.routing`); the daily cap,
    the once-only claim and the survey's keys are by it alike."""

    to: str
    text: str
    kind: str  # ack, progress, survey, result, reminder, clarification, opt_out, query, supervision
    ticket_no: str | None = None
    message_id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=now_utc)
    urgent: bool = False
    channel: Channel = "sms"
    resent_from: str | None = None  # 补发: the message the desk sent again

    @property
    def masked_to(self) -> str:
        return masked(self.channel, self.to)

    def to_json(self) -> dict[str, Any]:
        out = {
            "to": self.to,
            "text": self.text,
            "kind": self.kind,
            "ticket_no": self.ticket_no,
            "message_id": self.message_id,
            "created_at": self.created_at.isoformat(),
            "urgent": self.urgent,
        }
        if self.resent_from:
            out["resent_from"] = self.resent_from
        # Only when not SMS: a record without a channel is an SMS.
        return out if self.channel == "sms" else out | {"channel": self.channel}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        """Reads what `to_json` wrote, and what it wrote before the address was named `to`: messages
        kept in Redis (held and retried jobs, claims in flight) outlive an upgrade."""
        fields = {k: v for k, v in data.items() if k not in ("to", "phone")}
        to = data["to"] if "to" in data else data["phone"]
        return cls(**(fields | {"to": to, "created_at": datetime.fromisoformat(data["created_at"])}))


class SmsError(Exception):
    """The gateway did not take the message."""


class PermanentSmsError(SmsError):
    """Retrying will not help (bad number, refused content, bad credentials)."""


class TransientSmsError(SmsError):
    """The provider was down or slow; the message may be tried again later."""


class Undeliverable(PermanentSmsError):
    """The channel will not deliver this message to this recipient now, and trying again will not
    change that until the recipient acts: WeChat's customer-service messages reach only a user who
    wrote to the account in the last 48 hours (errcode 45015). Recorded as `undelivered`, not
    retried; a notice the resident waits for is kept until they write again
    (`services.notifier.window`)."""


def backoff(attempt: int, base_delay: float, max_delay: float) -> float:
    """Delay before retry number `attempt` (1, 2, ...): exponential, capped, with a little jitter."""
    delay = min(max_delay, base_delay * 2 ** (attempt - 1))
    return delay * random.uniform(0.8, 1.0)


class SmsGateway(Protocol):
    async def send(self, message: Message) -> str:
        """Hand the message over; returns the provider's message id. Raises `SmsError` if not taken."""
        ...


# The outbox's batch. KEYS: the list, then per message its id's key. ARGV: how many to keep, how long
# an id is remembered, then per message its JSON. A message whose id was taken already is dropped.
_OUTBOX_PUSH = """
local pushed = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('LPUSH', KEYS[1], ARGV[i + 1])
    pushed = pushed + 1
  end
end
redis.call('LTRIM', KEYS[1], 0, ARGV[1] - 1)
return pushed
"""
# As long as the notifier may send a message again (its claim's lifetime).
OUTBOX_ID_TTL = 30 * 86400


class OutboxGateway:
    """Embedded mode: the 'sent' SMS are a Redis list (newest first) and a log line. A message id
    is taken once (`{key}:id:{message_id}`, 30 days), as a provider deduplicates by `client_ref`:
    a message sent again after a crash is not listed twice."""

    KEY = "sms:outbox"
    TO = "phone"  # the field of a listed message that names its recipient
    WHAT = "SMS"

    def __init__(self, redis: Redis, *, keep: int = 100_000, key: str | None = None) -> None:
        self.redis = redis
        self.keep = keep
        self.KEY = key or type(self).KEY
        self._push = redis.register_script(_OUTBOX_PUSH)

    def id_key(self, message_id: str) -> str:
        return f"{self.KEY}:id:{message_id}"

    async def send(self, message: Message) -> str:
        return (await self.send_many([message]))[0]

    async def send_many(self, messages: list[Message]) -> list[str]:
        await self._push(
            keys=[self.KEY, *(self.id_key(m.message_id) for m in messages)],
            args=[
                self.keep,
                OUTBOX_ID_TTL,
                *(orjson.dumps(self.record(m)) for m in messages),
            ],
        )
        for m in messages:
            log.debug("%s %s to %s (%s): %s", self.WHAT, m.kind, m.masked_to, m.ticket_no, m.text[:40])
        return [m.message_id for m in messages]

    def record(self, message: Message) -> dict[str, Any]:
        """The message as the outbox lists it (`GET /api/v1/sms/outbox`): the SMS outbox holds
        phones only, and names the recipient `phone` as it always has."""
        return {"phone": message.to} | {k: v for k, v in message.to_json().items() if k != "to"}

    async def sent(self, to: str | None = None, limit: int = 100) -> list[dict]:
        """What was sent, newest first, optionally to one recipient (a phone; an openid for WeChat)."""
        out = []
        for raw in await self.redis.lrange(self.KEY, 0, -1 if to else limit - 1):
            record = json.loads(raw)
            if to is None or record[self.TO] == to:
                out.append(record)
                if len(out) >= limit:
                    break
        return out


class HttpSmsGateway:
    """A provider's HTTP API: POST {"phone", "text", "client_ref"} as JSON with a bearer token; a 2xx
    answer (optionally with {"id": provider id}) means taken. The provider's delivery receipts come
    back through POST /api/v1/sms/receipts with our `client_ref` as the message id."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        timeout: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"SMS_GATEWAY_URL {url!r}: expected an http(s) URL of the provider's endpoint")
        self.url = url
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(timeout=timeout, headers=headers)

    def backoff(self, attempt: int) -> float:
        return backoff(attempt, self.base_delay, self.max_delay)

    async def send(self, message: Message) -> str:
        body = {"phone": message.to, "text": message.text, "client_ref": message.message_id}
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                r = await self.client.post(self.url, json=body)
            except httpx.TimeoutException:
                last = "timeout"
            except httpx.TransportError as e:
                last = f"connection error: {type(e).__name__}"
            else:
                if r.is_success:
                    try:
                        provider_id = r.json().get("id")
                    except (ValueError, AttributeError):
                        provider_id = None
                    return str(provider_id or message.message_id)
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    raise PermanentSmsError(
                        f"provider refused the message: HTTP {r.status_code} {r.text[:200]}"
                    )
                last = f"HTTP {r.status_code}"
            if attempt < self.attempts:
                await self.sleep(self.backoff(attempt))
        raise TransientSmsError(f"provider unavailable after {self.attempts} attempts ({last})")

    async def aclose(self) -> None:
        await self.client.aclose()


def make_gateway(settings: Settings, redis: Redis) -> SmsGateway:
    if settings.sms_gateway == "http":
        return HttpSmsGateway(
            settings.sms_gateway_url, settings.sms_gateway_token, attempts=settings.sms_gateway_attempts
        )
    return OutboxGateway(redis)
