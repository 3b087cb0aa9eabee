"""One answer per inbound SMS: an SMS provider posts a resident's message again when it did not get
our answer in time (a timeout, a 503 while the broker was away), and it names each inbound message
with an id of its own. With that id (`message_id` in `POST /api/v1/sms/inbound`), the repeat gets
the first answer back instead of registering a second appeal, texting a second progress answer or
recording a second survey comment.

Redis keys (db of REDIS_URL):
  sms:in:{caller}:{message_id}   "pending" while the first post is handled (PENDING_TTL), then
                                 the answer given (status and body, JSON; ANSWER_TTL)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

PENDING = b"pending"
PENDING_TTL = 120  # seconds: a handler that died mid-way frees the id for the provider's next retry
ANSWER_TTL = 24 * 3600  # providers retry for minutes, not days


def _key(caller: str, message_id: str) -> str:
    # The sender's too: one provider id sent with another number must not read the first one's answer.
    return f"sms:in:{caller}:{message_id}"


Answer = tuple[int, dict[str, Any]]  # an HTTP status and a JSON body


class InboundMessages:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def once(
        self, caller: str, message_id: str, handle: Callable[[], Awaitable[Answer]]
    ) -> Answer | None:
        """`handle()`'s answer to the first post of a message; the same answer to its repeats; None
        while the first post is being handled. `caller`: the sender's caller id
        (`shared.privacy.caller_id`). A `handle()` that raises leaves nothing: the provider's retry
        is handled anew."""
        key = _key(caller, message_id)
        if not await self.redis.set(key, PENDING, nx=True, ex=PENDING_TTL):
            raw = await self.redis.get(key)
            if raw is None or raw == PENDING:  # being handled (or its claim just expired)
                return None
            stored = json.loads(raw)
            return stored["status"], stored["body"]
        try:
            status, body = await handle()
        except BaseException:
            await self.redis.delete(key)
            raise
        payload = json.dumps({"status": status, "body": body}, ensure_ascii=False)
        await self.redis.set(key, payload, ex=ANSWER_TTL)
        return status, body
