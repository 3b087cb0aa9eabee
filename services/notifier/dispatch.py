"""Sending SMS: once per (event, kind), within the daily cap and outside quiet hours, through the gateway.

  sms:done:{event}:{kind}     "sending:" + the message's JSON while it is being sent, then the message
                              id once the gateway took it (or it was held, or failed); 30 days
  sms:sending:{event}:{kind}  the lease of the notifier sending it now; a minute
  sms:count:{yyyymmdd}        hash address (a phone, an openid) -> messages sent to it that local day
                              (the daily cap); 2 days

A message is claimed in two phases so that a crash loses nothing and sends nothing twice. The claim
records the message (with its id) and takes a short lease; the gateway's answer turns the record
into "done" and drops the lease, in the same transaction as the message's state. A notifier killed
in between leaves the record and a lease that expires: the redelivered event (its offset was not
committed) sends the recorded message again, with the SAME message id, which the provider (as
`client_ref`) and the outbox gateway deduplicate. An event redelivered while another notifier holds
the lease (its send in flight) is not sent: the batch fails with `SendInFlight`, is read again, and
by then the message is done, or its lease has expired.

A message that quiet hours or the daily cap (by the day's count) hold is not claimed: holding it
sends nothing, so one script marks it done, writes its state and schedules it, all at once, and a
crash leaves either all of that or none (a flood's messages are mostly held: the cap reached, or
the night).

It also writes each message's state (`services.notifier.states`), schedules what it holds in the
job queue (`services.notifier.jobs`), and keeps a WeChat notice that WeChat would not take past its
48 hours until the resident writes again (`services.notifier.pending`), in the same transaction.
A batch costs a few Redis round trips whatever its size (the day's counts, the holds, the claim,
then states + counts + held jobs + kept notices + done), each a single command or one pipeline:
the per-item commands run as Lua scripts, because redis-py packs and parses every command in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Literal

import orjson
from redis.asyncio import Redis

from services.notifier.gateway import Message, PermanentSmsError, SmsError, SmsGateway, Undeliverable
from services.notifier.jobs import RETRY_LATER, Job, JobQueue, SendJob, encode
from services.notifier.pending import PendingNotices
from services.notifier.policy import Policy
from services.notifier.states import STATE_TTL, about_resident, state_key, state_record, ticket_records_key
from services.notifier.wechat_gateway import WeChatGateway, WeChatOutbox
from services.notifier.window import worth_keeping
from shared.events import now_utc
from shared.metrics import SMS_SENT, WECHAT_KEPT

log = logging.getLogger(__name__)

DONE_TTL = 30 * 86400  # longer than the topics' retention: a re-read event never sends again
COUNT_TTL = 2 * 86400
# Longer than the gateway takes to answer, retries included (the HTTP gateway's five attempts and
# their backoff: about 35 s at worst): a live sender's lease never expires under it.
SEND_LEASE = timedelta(seconds=60)
# How long a batch that met a message in flight waits (at most) before failing to be read again.
IN_FLIGHT_WAIT = 5.0
# What became of a message handed to `send`: duplicate when its (event, kind) was already done;
# undelivered when the channel cannot reach the recipient now (WeChat past its 48 hours).
SendResult = Literal["sent", "held", "retrying", "failed", "undelivered", "duplicate"]

# The claim of a batch. KEYS: per message its done key, then its lease key. ARGV: the done ttl (s),
# the lease ttl (ms), then per message its JSON. Returns per message: 0 when it is done; the JSON
# of the message to send (this one, or the one recorded by a sender that died) when the lease was
# taken now; else 1 + the milliseconds left on another sender's lease.
_CLAIM = """
local out = {}
for i = 1, #KEYS / 2 do
  local done, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local record = redis.call('GET', done)
  if record and string.sub(record, 1, 8) ~= 'sending:' then
    out[i] = 0
  elseif redis.call('SET', lease, '1', 'NX', 'PX', ARGV[2]) then
    if not record then
      record = 'sending:' .. ARGV[i + 2]
      redis.call('SET', done, record, 'EX', ARGV[1])
    end
    out[i] = string.sub(record, 9)
  else
    out[i] = 1 + math.max(redis.call('PTTL', lease), 0)
  end
end
return out
"""
# Claims the gateway answered for. KEYS: per message its done key, then its lease key. ARGV: the
# done ttl, then per message its id.
_DONE = """
for i = 1, #KEYS / 2 do
  redis.call('SET', KEYS[2 * i - 1], ARGV[i + 1], 'EX', ARGV[1])
  redis.call('DEL', KEYS[2 * i])
end
return #KEYS / 2
"""


# The holds of a batch. KEYS: the job queue, then per message its done, lease and state keys, then
# the tickets' indexes. ARGV: the done ttl, the state ttl, the number of messages, then per message:
# its id, its state record, its job, when the job is due and the position of its ticket's index
# among those keys (0: none). Returns per message: 1 when it is held now; 0 when it is done already;
# -1 when a sender that died recorded it (it goes the claim's way, which sends or holds that very
# message); else 2 + the milliseconds left on another sender's lease.
_HOLD = """
local n = tonumber(ARGV[3])
local out = {}
for i = 1, n do
  local done, lease, state = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local a = 4 + 5 * (i - 1)
  local record = redis.call('GET', done)
  if not record then
    redis.call('SET', done, ARGV[a], 'EX', ARGV[1])
    redis.call('SET', state, ARGV[a + 1], 'EX', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[a + 3], ARGV[a + 2])
    local k = tonumber(ARGV[a + 4])
    if k > 0 then
      redis.call('SADD', KEYS[1 + 3 * n + k], state)
      redis.call('EXPIRE', KEYS[1 + 3 * n + k], ARGV[2])
    end
    out[i] = 1
  elseif string.sub(record, 1, 8) ~= 'sending:' then
    out[i] = 0
  else
    local left = redis.call('PTTL', lease)
    out[i] = left > 0 and 2 + left or -1
  end
end
return out
"""


class SendInFlight(Exception):
    """Another notifier is sending some of these messages now: read the batch again later."""


def done_key(event_id: str, kind: str) -> str:
    return f"sms:done:{event_id}:{kind}"


def lease_key(event_id: str, kind: str) -> str:
    return f"sms:sending:{event_id}:{kind}"


# The states of a dispatched batch, the day's count of each address sent to, and each resident's
# message under its ticket (`states.ticket_records_key`, what an erasure finds), in one command.
# KEYS: the day's count hash, then per message its state key, then the tickets' indexes. ARGV: state
# ttl, count ttl, the number of messages, then per message: its state record, the address to count
# ('' when it was not sent), and the position of its ticket's index among those keys (0: none).
_RECORD_STATES = """
local n = tonumber(ARGV[3])
for i = 1, n do
  local state, a = KEYS[1 + i], 1 + 3 * i
  redis.call('SET', state, ARGV[a], 'EX', ARGV[1])
  if ARGV[a + 1] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[a + 1], 1) end
  local k = tonumber(ARGV[a + 2])
  if k > 0 then
    redis.call('SADD', KEYS[1 + n + k], state)
    redis.call('EXPIRE', KEYS[1 + n + k], ARGV[1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n
"""


class Dispatcher:
    def __init__(
        self,
        redis: Redis,
        gateway: SmsGateway,
        policy: Policy,
        jobs: JobQueue,
        *,
        wechat: WeChatGateway | None = None,
        clock: Callable[[], datetime] = now_utc,
        lease: timedelta = SEND_LEASE,
        in_flight_wait: float = IN_FLIGHT_WAIT,
    ) -> None:
        self.redis = redis
        self.gateway = gateway
        # WeChat messages (`Message.channel`): the embedded outbox unless another is given.
        self.wechat: WeChatGateway = wechat if wechat is not None else WeChatOutbox(redis)
        self.policy = policy
        self.jobs = jobs
        self.pending = PendingNotices(redis, jobs)
        self.clock = clock
        self.lease = lease
        self.in_flight_wait = in_flight_wait
        self._claim = redis.register_script(_CLAIM)
        self._hold_script = redis.register_script(_HOLD)

    async def send(self, event_id: str, message: Message, now: datetime | None = None) -> SendResult:
        """Send `message` for `event_id` unless one of its kind already was (restarts included).
        Raises `SendInFlight` when another notifier is sending it now."""
        return (await self.send_many([(event_id, message)], now))[0]

    async def send_many(
        self, items: Sequence[tuple[str, Message]], now: datetime | None = None
    ) -> list[SendResult]:
        """`send` for a batch (event id, message), in a few Redis round trips whatever its size.
        What quiet hours or the daily cap hold is held at once (`_HOLD`); the rest is claimed, and
        what no other notifier is sending is sent. Then, should another be sending some,
        `SendInFlight` is raised (after waiting a little for its lease) so that the batch is read
        again: those come back as duplicates once done, or are sent when their lease expired."""
        if not items:
            return []
        now = now or self.clock()
        results: list[SendResult] = ["duplicate"] * len(items)
        firsts: dict[tuple[str, str], int] = {}  # an event twice in one batch is sent once
        for i, (event_id, m) in enumerate(items):
            firsts.setdefault((event_id, m.kind), i)
        order = list(firsts.values())
        counts = await self.redis.hmget(self._count_key(now), [items[i][1].to for i in order])
        # By the day's counts alone: a message that some of this batch would push over the cap is
        # claimed, and `dispatch` decides (the others may turn out to be duplicates, sent before).
        holds = self._holds([items[i][1] for i in order], counts, now, within_batch=False)
        to_claim = [i for n, i in enumerate(order) if n not in holds]
        busy: list[int] = []  # per message another notifier is sending: 1 + its lease's ms left
        if holds:
            held = [(order[n], until, why) for n, (until, why) in holds.items()]
            for (i, _, _), answer in zip(held, await self._hold(items, held, now), strict=True):
                if answer == 1:  # (0: done already, a duplicate)
                    results[i] = "held"
                elif answer == -1:  # recorded by a sender that died: sent or held as recorded
                    to_claim.append(i)
                elif answer > 1:
                    busy.append(answer - 1)
        if to_claim:
            busy += await self._claim_and_dispatch(items, sorted(to_claim), results, now)
        if busy:
            await asyncio.sleep(min(self.in_flight_wait, (max(busy) - 1) / 1000))
            raise SendInFlight(f"{len(busy)} message(s) in flight")
        return results

    async def _hold(
        self, items: Sequence[tuple[str, Message]], held: list[tuple[int, datetime, str]], now: datetime
    ) -> list[int]:
        """Hold these items (index, until when, why) in one command (`_HOLD`); its answers."""
        messages = [items[i][1] for i, _, _ in held]
        indexes, slots = _index_slots(messages)
        stamp = now.isoformat()
        keys: list[str] = [self.jobs.key]
        args: list[bytes | str | float] = [DONE_TTL, STATE_TTL, len(held)]
        for (i, until, why), m, slot in zip(held, messages, slots, strict=True):
            event_id = items[i][0]
            keys += [done_key(event_id, m.kind), lease_key(event_id, m.kind), state_key(m.message_id)]
            _, record = _held_record(m, stamp, until, why)
            args += [m.message_id, record, encode(SendJob(m)), until.timestamp(), slot]
        return list(await self._hold_script(keys=[*keys, *indexes], args=args))

    async def _claim_and_dispatch(
        self, items: Sequence[tuple[str, Message]], at: list[int], results: list[SendResult], now: datetime
    ) -> list[int]:
        """Claim the items at `at` and dispatch those whose lease was taken now, their results set in
        `results`. Returns, per item another notifier is sending, 1 + its lease's ms left."""
        pairs = [(done_key(e, m.kind), lease_key(e, m.kind)) for e, m in (items[i] for i in at)]
        texts = [self._json(items[i][1]) for i in at]  # each message serialised once
        answers = await self._claim(
            keys=[k for pair in pairs for k in pair],
            args=[DONE_TTL, int(self.lease.total_seconds() * 1000), *texts],
        )
        mine: list[int] = []  # the items whose lease was taken now
        messages: list[Message] = []
        leases: list[tuple[str, str]] = []
        busy: list[int] = []
        for i, pair, text, answer in zip(at, pairs, texts, answers, strict=True):
            if isinstance(answer, int):  # 0: done already; else another sender's lease + 1 ms
                if answer:
                    busy.append(answer)
                continue
            recorded = answer if isinstance(answer, bytes) else str(answer).encode()
            # Not ours: a sender that died recorded it. Send that very message (same id) again.
            messages.append(items[i][1] if recorded == text else Message.from_json(json.loads(recorded)))
            mine.append(i)
            leases.append(pair)
        try:
            states = await self.dispatch(messages, now, claims=leases)
        except Exception:
            # Redis failed: drop the leases, so that the redelivered event sends the recorded
            # messages again at once (same ids: the gateway drops those it took already).
            if leases:
                with contextlib.suppress(Exception):
                    await self.redis.delete(*(lease for _, lease in leases))
            raise
        for i, state in zip(mine, states, strict=True):
            results[i] = state
        return busy

    @staticmethod
    def _json(message: Message) -> bytes:
        # Bytes, as Redis takes them (a str of Chinese text is encoded again at every send). The
        # text is only compared with what this same code recorded: a message recorded in another
        # form (an older version's) is read back and sent as it was, which is what a mismatch does.
        return orjson.dumps(message.to_json(), option=orjson.OPT_SORT_KEYS)

    async def dispatch(
        self,
        messages: list[Message],
        now: datetime,
        *,
        claims: Sequence[tuple[str, str]] = (),
    ) -> list[SendResult]:
        """Hold what quiet hours or the cap hold, hand the rest to the gateway, record every state.
        No once-only check: `send_many` made it, or the message is a held one whose time came.
        `claims` (done key, lease key) per message, from `send_many`: marked done with the states."""
        if not messages:
            return []
        count_key = self._count_key(now)
        held = self._holds(messages, await self.redis.hmget(count_key, [m.to for m in messages]), now)
        to_send = [i for i in range(len(messages)) if i not in held]
        outcomes = dict(zip(to_send, await self._send_all([messages[i] for i in to_send]), strict=True))
        results: list[SendResult] = []
        written: list[tuple[str, bytes, str]] = []  # state key, state, address to count ('' : not sent)
        kept: list[Message] = []  # past WeChat's 48 hours: they wait for the resident to write
        later: dict[Job, datetime] = {}  # held, or to retry: one command for the batch's jobs
        stamp = now.isoformat()  # when each message took its state
        # One transaction: a message is done exactly when its state (and held job) is written.
        async with self.redis.pipeline(transaction=True) as p:
            for i, m in enumerate(messages):
                outcome = outcomes.get(i)
                if i in held:
                    until, why = held[i]
                    later[SendJob(m)] = until
                    written.append((*_held_record(m, stamp, until, why), ""))
                    results.append("held")
                elif isinstance(outcome, Undeliverable):
                    # Undeliverable only until the resident writes to the account again: a notice
                    # they wait for is kept for then (`services.notifier.window`).
                    keep = worth_keeping(m)
                    log.warning(
                        "%s %s for %s to %s not delivered%s: %s",
                        m.channel, m.kind, m.ticket_no, m.masked_to,
                        ", kept until they write to the account again" if keep else "", outcome,
                    )  # fmt: skip
                    extra = {"kept": "until the resident writes to the account again"} if keep else {}
                    written.append(
                        (*state_record(m, "undelivered", at=stamp, error=str(outcome), **extra), "")
                    )
                    results.append("undelivered")
                    if keep:
                        kept.append(m)
                elif isinstance(outcome, PermanentSmsError):
                    log.warning(
                        "%s %s for %s to %s refused: %s", m.channel, m.kind, m.ticket_no, m.masked_to, outcome
                    )
                    written.append((*state_record(m, "failed", at=stamp, error=str(outcome)), ""))
                    results.append("failed")
                elif isinstance(outcome, SmsError):
                    later[SendJob(m)] = now + RETRY_LATER
                    written.append((*state_record(m, "retrying", at=stamp, error=str(outcome)), ""))
                    results.append("retrying")
                else:
                    key, record = state_record(m, "sent", at=stamp, provider_id=str(outcome), sent_at=stamp)
                    # Counted against the cap unless exempt from it: an urgent notice, or an answer
                    # to the resident's own message (a query's, a rating's confirmation), which would
                    # otherwise use up the day's notices and hold the next one until morning.
                    written.append((key, record, "" if m.urgent else m.to))
                    SMS_SENT.labels(kind=m.kind).inc()
                    results.append("sent")
            if later:
                self.jobs.add_into(p, later)
            indexes, slots = _index_slots(messages)
            p.eval(
                _RECORD_STATES,
                1 + len(written) + len(indexes),
                count_key,
                *(key for key, _, _ in written),
                *indexes,
                STATE_TTL,
                COUNT_TTL,
                len(written),
                *(
                    v
                    for (_, record, to), slot in zip(written, slots, strict=True)
                    for v in (record, to, slot)
                ),
            )
            self.pending.keep_into(p, kept)
            if claims:
                p.eval(
                    _DONE,
                    2 * len(claims),
                    *(k for claim in claims for k in claim),
                    DONE_TTL,
                    *(m.message_id for m in messages),
                )
            await p.execute()
        for m in kept:
            WECHAT_KEPT.labels(kind=m.kind).inc()
        return results

    def _count_key(self, now: datetime) -> str:
        return f"sms:count:{self.policy.local_day(now):%Y%m%d}"

    def _holds(
        self,
        messages: Sequence[Message],
        counts: Sequence[bytes | str | None],
        now: datetime,
        *,
        within_batch: bool = True,
    ) -> dict[int, tuple[datetime, str]]:
        """The positions of the messages that quiet hours or the daily cap hold, given the day's
        count of each one's address: until when, and why ("daily_cap", else "quiet_hours").
        `within_batch`: the messages before each one that are sent count against its cap too."""
        in_batch: Counter[str] = Counter()  # several messages to one address in the same batch
        held: dict[int, tuple[datetime, str]] = {}
        for i, (m, count) in enumerate(zip(messages, counts, strict=True)):
            sent_today = int(count or 0) + in_batch[m.to]
            at = self.policy.send_at(now, urgent=m.urgent, sent_today=sent_today)
            if at > now:
                held[i] = (at, "daily_cap" if sent_today >= self.policy.daily_cap else "quiet_hours")
            elif within_batch:
                in_batch[m.to] += 1
        return held

    async def _send_all(self, messages: list[Message]) -> list[str | SmsError]:
        """Provider ids, or the SmsError for each message its channel's gateway did not take, in
        the order of `messages`. Anything else (Redis down under an outbox gateway) raises."""
        by_channel: dict[str, list[int]] = {}
        for i, m in enumerate(messages):
            by_channel.setdefault(m.channel, []).append(i)
        out: list[str | SmsError] = [""] * len(messages)
        for channel, at in by_channel.items():
            gateway = self.wechat if channel == "wechat" else self.gateway
            results = await self._send_through(gateway, [messages[i] for i in at])
            for i, result in zip(at, results, strict=True):
                out[i] = result
        return out

    async def _send_through(
        self, gateway: SmsGateway | WeChatGateway, messages: list[Message]
    ) -> list[str | SmsError]:
        if not messages:
            return []
        send_many = getattr(gateway, "send_many", None)  # a gateway that takes a batch at once
        if send_many is not None:
            return list(await send_many(messages))
        results = await asyncio.gather(*(gateway.send(m) for m in messages), return_exceptions=True)
        out: list[str | SmsError] = []
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, SmsError):
                raise r
            out.append(r)
        return out


def _held_record(message: Message, stamp: str, until: datetime, why: str) -> tuple[str, bytes]:
    """The state of a message held since `stamp` until `until`, because of `why` (the two ways a
    message is held, `Dispatcher._hold` and `Dispatcher.dispatch`, write the same record)."""
    return state_record(message, "held", at=stamp, until=until.isoformat(), held_for=why)


def _index_slots(messages: Sequence[Message]) -> tuple[dict[str, int], list[int]]:
    """The index keys of the messages' tickets (`states.ticket_records_key`), each with its position
    (from 1), and each message's position among them (0: a message not about its resident)."""
    indexes: dict[str, int] = {}
    slots = [
        indexes.setdefault(ticket_records_key(m.ticket_no), len(indexes) + 1)
        if m.ticket_no and about_resident(m)
        else 0
        for m in messages
    ]
    return indexes, slots
