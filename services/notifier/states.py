"""What became of every message: its state, and the provider's delivery receipts that complete it.

  sms:msg:{message_id}   JSON: state, kind, ticket_no, the masked phone (a WeChat message: the
                         masked openid and `channel`), and what the state adds
                         (until, error, provider_id, sent_at, receipt_error, reason; a WeChat
                         notice kept for its resident's return: kept, then dropped if it is
                         not sent after all); 30 days
  sms:ticket:{no}        the keys of a ticket's records that reach its resident: its messages'
                         states (not the supervisors'), its surveys (`survey:{id}`) and the WeChat
                         notices kept for its resident (`wx:pending:{openid}`), added where they
                         are written; 30 days from the last. What an erasure removes.

States: held (quiet hours or the daily cap), sent, retrying (the provider was down), failed (the
provider refused it), cancelled (a held survey message after an opt-out), then delivered or
undelivered when the provider's receipt comes; undelivered too when the channel says at once that it
cannot reach the recipient (WeChat past its 48 hours, `gateway.Undeliverable`), until a notice kept
for the resident (`services.notifier.pending`) is sent again when they write, and takes the state
that send yields.
"""

from __future__ import annotations

import json
from typing import Literal

import orjson
from redis.asyncio import Redis

from services.notifier.gateway import Message

STATE_TTL = 30 * 86400
MessageState = Literal["held", "sent", "retrying", "failed", "cancelled", "delivered", "undelivered"]


def state_key(message_id: str) -> str:
    return f"sms:msg:{message_id}"


def ticket_records_key(ticket_no: str) -> str:
    return f"sms:ticket:{ticket_no}"


def about_resident(message: Message) -> bool:
    """A message to the resident about their ticket (indexed under it, see `ticket_records_key`);
    a supervisor's notice names the ticket but reaches staff."""
    return bool(message.ticket_no) and message.kind != "supervision"


def state_record(message: Message, state: MessageState, **extra: str) -> tuple[str, bytes]:
    """The message's state record: its key and JSON (for writers that batch it with other writes).
    Written by orjson, several times faster than the json module at a record per message."""
    to = (
        {"phone": message.masked_to}
        if message.channel == "sms"
        else {
            "channel": message.channel,
            "openid": message.masked_to,
        }
    )
    record = {"state": state, "kind": message.kind, "ticket_no": message.ticket_no or "", **to, **extra}
    return state_key(message.message_id), orjson.dumps(record)


class MessageStates:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def set(self, message: Message, state: MessageState, **extra: str) -> None:
        key, record = state_record(message, state, **extra)
        await self.redis.set(key, record, ex=STATE_TTL)

    async def get(self, message_id: str) -> dict[str, str]:
        """The message's state record; {} when the message is unknown (or older than 30 days)."""
        raw = await self.redis.get(state_key(message_id))
        return json.loads(raw) if raw else {}

    async def dropped(self, message_id: str, reason: str) -> None:
        """A message kept for its resident's return (`services.notifier.pending`) that will not be
        sent after all: it stays `undelivered`, no longer kept, and says why."""
        record = await self.get(message_id)
        if record:
            record.pop("kept", None)
            record["dropped"] = reason
            await self.redis.set(state_key(message_id), json.dumps(record, ensure_ascii=False), keepttl=True)

    async def receipt(self, message_id: str, delivered: bool, error: str = "") -> bool:
        """A provider's delivery receipt. False when the message is unknown."""
        record = await self.get(message_id)
        if not record:
            return False
        record |= {"state": "delivered" if delivered else "undelivered", "receipt_error": error}
        await self.redis.set(state_key(message_id), json.dumps(record, ensure_ascii=False), keepttl=True)
        return True
