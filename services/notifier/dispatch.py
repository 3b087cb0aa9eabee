"""Sending SMS: once per (event, kind), within the daily cap and outside quiet hours, through the gateway.

  sms:done:{event}:{kind}   this event's message of this kind was taken in hand (never sent twice); 30 days
  sms:count:{yyyymmdd}      hash phone -> messages sent to it that local day (the daily cap); 2 days

It also writes each message's state (`services.notifier.states`) and schedules what it holds in the
job queue (`services.notifier.jobs`). A batch costs three Redis round trips whatever its size (claim,
the day's counts, then states + counts + held jobs), each a single command or one pipeline: the
per-item commands run as Lua scripts, because redis-py packs and parses every command in Python.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from redis.asyncio import Redis

from services.notifier.gateway import PermanentSmsError, SmsError, SmsGateway, SmsMessage
from services.notifier.jobs import RETRY_LATER, JobQueue, SendJob
from services.notifier.policy import Policy
from services.notifier.states import STATE_TTL, state_record
from shared.events import now_utc
from shared.metrics import SMS_SENT

log = logging.getLogger(__name__)

DONE_TTL = 30 * 86400  # longer than the topics' retention: a re-read event never sends again
COUNT_TTL = 2 * 86400
# What became of a message handed to `send`: duplicate when its (event, kind) was already taken.
SendResult = Literal["sent", "held", "retrying", "failed", "duplicate"]

# KEYS: the keys; ARGV: the ttl, then a value per key. Returns per key 1 if it was set now, else 0.
_SET_NX_EACH = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'EX', ARGV[1]) and 1 or 0
end
return out
"""
# The states of a dispatched batch, and the day's count of each phone sent to, in one command.
# KEYS: the day's count hash, then per message its state key. ARGV: state ttl, count ttl, then per
# message: its state record and the phone to count ('' when it was not sent).
_RECORD_STATES = """
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', ARGV[1])
  if ARGV[2 * i] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[2 * i], 1) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return #KEYS - 1
"""


class Dispatcher:
    def __init__(
        self,
        redis: Redis,
        gateway: SmsGateway,
        policy: Policy,
        jobs: JobQueue,
        *,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.redis = redis
        self.gateway = gateway
        self.policy = policy
        self.jobs = jobs
        self.clock = clock
        self._set_nx_each = redis.register_script(_SET_NX_EACH)

    async def send(self, event_id: str, message: SmsMessage, now: datetime | None = None) -> SendResult:
        """Send `message` for `event_id` unless one of its kind already was (restarts included)."""
        return (await self.send_many([(event_id, message)], now))[0]

    async def send_many(
        self, items: Sequence[tuple[str, SmsMessage]], now: datetime | None = None
    ) -> list[SendResult]:
        """`send` for a batch (event id, message), in three Redis round trips whatever its size."""
        if not items:
            return []
        now = now or self.clock()
        keys = [f"sms:done:{event_id}:{m.kind}" for event_id, m in items]
        claimed = await self._set_nx_each(keys=keys, args=[DONE_TTL, *(m.message_id for _, m in items)])
        mine = [i for i, ok in enumerate(claimed) if ok]
        results: list[SendResult] = ["duplicate"] * len(items)
        try:
            states = await self.dispatch([items[i][1] for i in mine], now)
        except Exception:
            # Redis failed: let the redelivered event try again (should the gateway have taken some
            # already, a rare repeat beats a lost message).
            if mine:
                await self.redis.delete(*(keys[i] for i in mine))
            raise
        for i, state in zip(mine, states, strict=True):
            results[i] = state
        return results

    async def dispatch(self, messages: list[SmsMessage], now: datetime) -> list[SendResult]:
        """Hold what quiet hours or the cap hold, hand the rest to the gateway, record every state.
        No once-only check: `send_many` made it, or the message is a held one whose time came."""
        if not messages:
            return []
        count_key = f"sms:count:{self.policy.local_day(now):%Y%m%d}"
        counts = await self.redis.hmget(count_key, [m.phone for m in messages])
        in_batch: Counter[str] = Counter()  # several messages to one phone in the same batch
        held: dict[int, datetime] = {}
        for i, (m, count) in enumerate(zip(messages, counts, strict=True)):
            at = self.policy.send_at(now, urgent=m.urgent, sent_today=int(count or 0) + in_batch[m.phone])
            if at > now:
                held[i] = at
            else:
                in_batch[m.phone] += 1
        to_send = [i for i in range(len(messages)) if i not in held]
        outcomes = dict(zip(to_send, await self._send_all([messages[i] for i in to_send]), strict=True))
        results: list[SendResult] = []
        written: list[tuple[str, str, str]] = []  # state key, state, phone to count ('' : not sent)
        async with self.redis.pipeline(transaction=False) as p:
            for i, m in enumerate(messages):
                outcome = outcomes.get(i)
                if i in held:
                    self.jobs.add_into(p, {SendJob(m): held[i]})
                    written.append((*state_record(m, "held", until=held[i].isoformat()), ""))
                    results.append("held")
                elif isinstance(outcome, PermanentSmsError):
                    log.warning("SMS %s for %s refused by the provider: %s", m.kind, m.ticket_no, outcome)
                    written.append((*state_record(m, "failed", error=str(outcome)), ""))
                    results.append("failed")
                elif isinstance(outcome, SmsError):
                    self.jobs.add_into(p, {SendJob(m): now + RETRY_LATER})
                    written.append((*state_record(m, "retrying", error=str(outcome)), ""))
                    results.append("retrying")
                else:
                    key, record = state_record(m, "sent", provider_id=str(outcome), sent_at=now.isoformat())
                    written.append((key, record, m.phone))
                    SMS_SENT.labels(kind=m.kind).inc()
                    results.append("sent")
            p.eval(
                _RECORD_STATES,
                1 + len(written),
                count_key,
                *(key for key, _, _ in written),
                STATE_TTL,
                COUNT_TTL,
                *(v for _, record, phone in written for v in (record, phone)),
            )
            await p.execute()
        return results

    async def _send_all(self, messages: list[SmsMessage]) -> list[str | SmsError]:
        """Provider ids, or the SmsError for each message the gateway did not take. Anything else
        (Redis down under the outbox gateway) raises."""
        if not messages:
            return []
        send_many = getattr(self.gateway, "send_many", None)  # a gateway that takes a batch at once
        if send_many is not None:
            return list(await send_many(messages))
        results = await asyncio.gather(*(self.gateway.send(m) for m in messages), return_exceptions=True)
        out: list[str | SmsError] = []
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, SmsError):
                raise r
            out.append(r)
        return out
