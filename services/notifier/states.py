"""What became of every message: its state, and the provider's delivery receipts that complete it.

  sms:msg:{message_id}   JSON: state, kind, ticket_no, the masked phone (a WeChat message: the
                         masked openid and `channel`), the text, when the message was made
                         (created_at) and when it took this state (at), the message it sends
                         again (resent_from, 补发) or that sent it again while it was held
                         (replaced_by), and what the state adds
                         (until, error, provider_id, sent_at, receipt_error, receipt_at, reason; a WeChat
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
from datetime import UTC, datetime
from typing import Any, Literal, cast

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
    Written by orjson, several times faster than the json module at a record per message. `at`,
    when it took this state, is now unless `extra` says (the writer's clock). The text is kept so
    that the desk can tell a resident what they were sent (`MessageStates.of_ticket`); staff's
    words in it were masked when typed, and an erasure removes the record with the others."""
    to = (
        {"phone": message.masked_to}
        if message.channel == "sms"
        else {
            "channel": message.channel,
            "openid": message.masked_to,
        }
    )
    record = {
        "state": state,
        "kind": message.kind,
        "ticket_no": message.ticket_no or "",
        **to,
        "text": message.text,
        "created_at": message.created_at.isoformat(),
        **({"resent_from": message.resent_from} if message.resent_from else {}),
        **extra,
    }
    if "at" not in extra:
        record["at"] = datetime.now(UTC).isoformat()
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

    async def replaced(self, message_id: str, by: str) -> None:
        """A held message sent again at once (补发, as `by`): it stays held until its job runs,
        which cancels it rather than send it a second time."""
        record = await self.get(message_id)
        if record:
            record["replaced_by"] = by
            await self.redis.set(state_key(message_id), json.dumps(record, ensure_ascii=False), keepttl=True)

    async def receipt(self, message_id: str, delivered: bool, error: str = "") -> bool:
        """A provider's delivery receipt. False when the message is unknown."""
        record = await self.get(message_id)
        if not record:
            return False
        record |= {
            "state": "delivered" if delivered else "undelivered",
            "receipt_error": error,
            "receipt_at": datetime.now(UTC).isoformat(),
        }
        await self.redis.set(state_key(message_id), json.dumps(record, ensure_ascii=False), keepttl=True)
        return True

    async def of_ticket(self, ticket_no: str) -> list[dict[str, Any]]:
        """What the ticket's resident was sent, or was to be sent, by SMS or WeChat, in the order the
        messages were made, each with its id (`message_id`) and state record: what the desk reads
        when a resident says no message came. Kept 30 days, and not after an erasure. Supervisors'
        notices are not among them (they reach staff)."""
        members = cast("set[bytes]", await self.redis.smembers(ticket_records_key(ticket_no)))
        keys = sorted(k for m in members if (k := m.decode()).startswith(state_key("")))
        if not keys:
            return []
        records = [
            {"message_id": key.removeprefix(state_key("")), **json.loads(raw)}
            for key, raw in zip(keys, await self.redis.mget(keys), strict=True)
            if raw
        ]
        # Records written before they said when the message was made sort first, by when sent.
        return sorted(records, key=lambda r: (r.get("created_at", ""), r.get("sent_at", "")))
