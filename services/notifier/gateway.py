"""Where SMS go. `SmsGateway` is the interface; `OutboxGateway` (embedded mode) keeps every message
in a Redis list and logs it with the phone masked. A provider adapter implements the same interface."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Protocol

from redis.asyncio import Redis

from shared.events import new_id, now_utc
from shared.privacy import mask_phone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmsMessage:
    phone: str
    text: str
    kind: str  # ack, progress, survey, reminder, clarification, ...
    ticket_no: str | None = None
    message_id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=now_utc)


class SmsGateway(Protocol):
    async def send(self, message: SmsMessage) -> str:
        """Hand the message over; returns the provider's message id. Raises if it was not taken."""
        ...


class OutboxGateway:
    """Embedded mode: the 'sent' SMS are a Redis list (newest first) and a log line."""

    KEY = "sms:outbox"

    def __init__(self, redis: Redis, *, keep: int = 100_000) -> None:
        self.redis = redis
        self.keep = keep

    async def send(self, message: SmsMessage) -> str:
        record = asdict(message) | {"created_at": message.created_at.isoformat()}
        async with self.redis.pipeline(transaction=False) as p:
            p.lpush(self.KEY, json.dumps(record, ensure_ascii=False))
            p.ltrim(self.KEY, 0, self.keep - 1)
            await p.execute()
        log.info("SMS %s to %s (%s): %s", message.kind, mask_phone(message.phone),
                 message.ticket_no, message.text[:40])
        return message.message_id

    async def sent(self, phone: str | None = None, limit: int = 100) -> list[dict]:
        """What was sent, newest first, optionally to one phone."""
        out = []
        for raw in await self.redis.lrange(self.KEY, 0, -1 if phone else limit - 1):
            record = json.loads(raw)
            if phone is None or record["phone"] == phone:
                out.append(record)
                if len(out) >= limit:
                    break
        return out
