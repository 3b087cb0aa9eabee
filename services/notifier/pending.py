"""The WeChat notices waiting for their resident to write again (what waits and what then goes out
is `services.notifier.window`, pure).

  wx:pending:{openid}     sorted set: message id -> when the message was written (Unix time)
  wx:pending:{openid}:m   hash: message id -> the message (`Message.to_json` without the address)

Both expire `window.KEEP_DAYS` after the last notice kept; at most `window.KEEP_AT_MOST` per openid
(the newest). The sorted set is listed under each kept notice's ticket (`sms:ticket:{no}`, see
`services.notifier.states`), so an erasure finds it (`Notifier.forget`). What is kept is what a
resend needs and no more: the openid is the key (it is the address), the text cannot be written
again without the fields it was written from, and no phone, caller id or masked address is added.

  wx:wrote:{openid}       the resident wrote in the last `WROTE_SECONDS` (see below)

A notice is kept in the transaction that records its `undelivered` state (`Dispatcher.dispatch`).
When the resident writes, `wake` schedules a `jobs.ReturnJob` (due now) only if something waits:
the inbound WeChat handler spends one Redis command on it, and WeChat's API is called by the
notifier's scan, never while WeChat waits for the passive reply. The job `take`s everything at once
(one transaction), so two notifiers never send a kept notice twice.

A notice WeChat refused just before the resident wrote may be kept just after their `wake` looked:
nothing waited then, so no job. `wake` therefore leaves a mark for a while, and a notice kept while
the mark is there schedules the job itself and takes the mark (one extra job per message written,
so a notice refused again cannot go round and round). Both are scripts: one of the two always sees
the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from services.notifier.gateway import Message
from services.notifier.jobs import JobQueue, ReturnJob, encode
from services.notifier.states import STATE_TTL, ticket_records_key
from services.notifier.window import KEEP_AT_MOST, KEEP_DAYS

PREFIX = "wx:pending:"
WROTE_PREFIX = "wx:wrote:"
KEEP_TTL = KEEP_DAYS * 86400
# Longer than a send to WeChat can take (its timeouts and retries), so a refusal that was on its way
# when the resident wrote is kept while the mark is there.
WROTE_SECONDS = 120

# Keep one notice. KEYS: the openid's sorted set, its hash, the ticket's index, the openid's mark,
# the job queue. ARGV: the ttl, the cap, the index's ttl, the message id, when it was written, its
# JSON, its return job. A message id kept already is kept once; past the cap the oldest go; with the
# mark there (the resident has just written), the return job is due when they wrote.
_KEEP = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[5], ARGV[4]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[6])
end
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if over > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  redis.call('ZREM', KEYS[1], unpack(oldest))
  redis.call('HDEL', KEYS[2], unpack(oldest))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('EXPIRE', KEYS[3], ARGV[3])
local wrote = redis.call('GET', KEYS[4])
if wrote then
  redis.call('DEL', KEYS[4])
  redis.call('ZADD', KEYS[5], 'NX', wrote, ARGV[7])
end
return 1
"""
# The resident wrote: their mark, and their return job, due now, if anything waits for them. KEYS:
# the openid's sorted set, the job queue, the mark (when they wrote). ARGV: when it is due, the job,
# the mark's ttl.
# A job already waiting keeps its place.
_WAKE = """
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 'NX', ARGV[1], ARGV[2])
return 1
"""


def pending_key(openid: str) -> str:
    return f"{PREFIX}{openid}"


def wrote_key(openid: str) -> str:
    return f"{WROTE_PREFIX}{openid}"


def _bodies_key(key: str) -> str:
    return f"{key}:m"


def _record(message: Message) -> str:
    """The message as kept: its own JSON without the address, which is the key it is kept under."""
    return json.dumps({k: v for k, v in message.to_json().items() if k != "to"}, ensure_ascii=False)


def _message(openid: str, raw: str | bytes) -> Message:
    return Message.from_json(json.loads(raw) | {"to": openid})


class PendingNotices:
    def __init__(self, redis: Redis, jobs: JobQueue) -> None:
        self.redis = redis
        self.jobs = jobs

    def keep_into(self, p: Pipeline, messages: Sequence[Message]) -> None:
        """Keep WeChat `messages` for their openids, as part of the pipeline `p` (the transaction
        that records their state)."""
        for m in messages:
            key = pending_key(m.to)
            p.eval(
                _KEEP,
                5,
                key,
                _bodies_key(key),
                ticket_records_key(m.ticket_no or ""),
                wrote_key(m.to),
                self.jobs.key,
                KEEP_TTL,
                KEEP_AT_MOST,
                STATE_TTL,
                m.message_id,
                m.created_at.timestamp(),
                _record(m),
                encode(ReturnJob(m.to)),
            )

    async def keep(self, messages: Sequence[Message]) -> None:
        if messages:
            async with self.redis.pipeline(transaction=True) as p:
                self.keep_into(p, messages)
                await p.execute()

    async def wake(self, openid: str, now: datetime) -> bool:
        """The resident wrote to the account: whether anything waits for them (then their
        `ReturnJob` is due now). One command."""
        return bool(
            await self.redis.eval(
                _WAKE,
                3,
                pending_key(openid),
                self.jobs.key,
                wrote_key(openid),
                now.timestamp(),
                encode(ReturnJob(openid)),
                WROTE_SECONDS,
            )
        )

    async def take(self, openid: str) -> list[Message]:
        """Everything kept for `openid`, oldest first, removed in the same transaction."""
        key = pending_key(openid)
        async with self.redis.pipeline(transaction=True) as p:
            p.zrange(key, 0, -1)
            p.hgetall(_bodies_key(key))
            p.delete(key, _bodies_key(key))
            ids, bodies, _ = await p.execute()
        return [_message(openid, bodies[i]) for i in ids if i in bodies]

    async def forget(self, keys: Sequence[str], ticket_nos: Sequence[str]) -> int:
        """What is kept about these tickets, under these openids' keys (found by the tickets'
        indexes), goes: their residents' personal data was erased. The same residents' notices
        about other tickets stay (an erasure by retention reaches one old ticket at a time).
        Returns how many went."""
        erased, gone = set(ticket_nos), 0
        for key in keys:
            if not key.startswith(PREFIX):
                continue
            bodies = await self.redis.hgetall(_bodies_key(key))
            ids = [i for i, raw in bodies.items() if json.loads(raw).get("ticket_no") in erased]
            if ids:
                async with self.redis.pipeline(transaction=True) as p:
                    p.zrem(key, *ids)
                    p.hdel(_bodies_key(key), *ids)
                    await p.execute()
                gone += len(ids)
        return gone
