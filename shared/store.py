"""The ticket store in Redis: tickets, their event history, contacts, numbering, and the outbox.

Keys:
  t:{no}            the ticket, as JSON without its defaults (shared.tickets.Ticket, `ticket_json`)
  t:{no}:h          its history: every event about it, in order, as JSON with its topic (the first
                    its appeal; a classification without it: `event_record`, `history_records`)
  seq:{yyyymmdd}    the per-day ticket counter
  contact:{caller}  the caller's raw phone and name (personal data: only intake and notifier read it)
  outbox            events written to Redis but not yet confirmed published (sorted by time), and
                    the erasures' `PersonalDataRemoved`, which only the relay publishes

Every change goes through `apply_many`: read the tickets under WATCH, let a pure decision
(`shared.decisions`) decide the new state and the events, then write the tickets, append the events
to their histories and to the outbox in one MULTI (with the owner's follow-ups, `on_write`). The
caller publishes the events and then calls `published`; if it dies in between, the outbox relay
(`due_outbox`) publishes them again. Consumers drop the repeat by event id.

A ticket whose resident had their personal data erased (`remove_personal_data`) carries the time
of it; every later write keeps that ticket, and what it appends to its history, scrubbed: an appeal
still being classified or routed at the erasure must not bring the data back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

# The decision types live with the pure code; re-exported for the callers that write them here.
from shared.decisions import Change, Decision, JointDecision, Outcome, record_appeal
from shared.events import AppealClassified, AppealReceived, Event, PersonalDataRemoved, topic_first
from shared.privacy import may_carry_personal_data, scrub_event, scrub_ticket
from shared.tickets import Ticket

__all__ = [
    "Change",
    "ConcurrentUpdate",
    "Decision",
    "JointDecision",
    "OnWrite",
    "Outcome",
    "Read",
    "Result",
    "Then",
    "TicketStore",
    "apply_and_publish",
    "record_appeal",
    "together",
]


def _text(value: object) -> str:
    """A reply as text: the client is made without decode_responses, so replies are bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


# What a service keeps beside the tickets (the router: timers and department queues), added to the
# MULTI of every ticket write, given each changed ticket as it was (None: new) and as it is now. Kept
# in the same transaction it can never be older than the ticket, and no second read is needed.
OnWrite = Callable[[Any, Sequence[tuple[Ticket | None, Ticket]]], None]


# A second step of a batch write (`apply_many(..., then=...)`): given the first changes' results and
# a reader of more tickets inside the same transaction (each ticket as the transaction now has it),
# the changes to add to the same write. The router holds a hotspot's tickets with their assignment.
Read = Callable[[Sequence[str]], Awaitable[dict[str, Ticket | None]]]
Result = tuple[Ticket | None, list[Event]]
Then = Callable[[Sequence[Result], Read], Awaitable[Sequence[Change]]]


def together(
    nos: Sequence[str],
    decide: JointDecision,
    *,
    also: Callable[[Mapping[str, Ticket | None]], Sequence[str]] | None = None,
) -> Then:
    """One decision about several tickets (`nos`), as the `then` of a write with no changes of its
    own: `apply_and_publish(store, [], publish, then=together(nos, decide))`. The tickets are read
    under the transaction's WATCH, the decision sees them all, and what it decides for each is
    written in the same MULTI, or nothing is (a ticket that changed meanwhile: read and decided
    again). Never split: `apply_many` halves a busy batch by its own changes, and this one has none,
    so it is retried whole and then refused (`ConcurrentUpdate`).

    `also`: the tickets the decision needs besides, named by those read (并案: the duplicates of the
    ticket merged, which move with it). Read in the same transaction, one more round trip, after
    the tickets that name them are watched: a change to those meanwhile fails the write, and the
    next attempt reads both again."""

    def decided(outcome: Outcome) -> Decision:
        return lambda _ticket: outcome  # decided on the ticket just read, in this transaction

    async def then(_: Sequence[Result], read: Read) -> list[Change]:
        tickets = await read(nos)
        if also is not None and (more := [n for n in also(tickets) if n not in tickets]):
            tickets = {**tickets, **await read(more)}
        outcomes = decide(tickets) or {}
        return [Change(no, decided(outcome)) for no, outcome in outcomes.items()]

    return then


class ConcurrentUpdate(RuntimeError):
    """The same tickets kept changing under us; the caller may retry later."""


def contact_key(caller_id: str) -> str:
    return f"contact:{caller_id}"


def ticket_key(no: str) -> str:
    return f"t:{no}"


def history_key(no: str) -> str:
    return f"t:{no}:h"


def ticket_json(ticket: Ticket) -> bytes:
    """The ticket as the store keeps it: its JSON without the fields still at their defaults, which
    come back as those defaults when it is read. In the benchmark's flood those were 40% of a
    ticket's bytes (820 of 2,050 on average), in Redis's memory and again in its append-only file
    at every write. Readers of the raw JSON take the required fields (the status, the time
    received) or give the defaults themselves (`services.router.service.QueueFilter.admits`)."""
    return ticket.__pydantic_serializer__.to_json(ticket, exclude_defaults=True)


# Writes a batch in one command (one reply to parse, not one per key), inside the MULTI that WATCH
# guards. ARGV: outbox score, n tickets, then per ticket: json, number of history records, records;
# KEYS: per ticket: ticket key, history key; last: the outbox.
_WRITE_BATCH = """
local score = ARGV[1]
local n = tonumber(ARGV[2])
local a = 3
local outbox = KEYS[#KEYS]
for i = 1, n do
  redis.call('SET', KEYS[2 * i - 1], ARGV[a])
  local h = tonumber(ARGV[a + 1])
  a = a + 2
  if h > 0 then
    redis.call('RPUSH', KEYS[2 * i], unpack(ARGV, a, a + h - 1))
  end
  a = a + h
end
for j = a, #ARGV, 2 do
  redis.call('ZADD', outbox, ARGV[j], ARGV[j + 1])
end
return n
"""


# Tickets per script call of a batch write (see `TicketStore._write_into`): about 80 KB of
# arguments, under the allocator's threshold for handing memory to the kernel (128 KB).
WRITE_CHUNK = 16


# A classification carries its whole appeal, which its consumers need; a history holds that appeal
# already, as its first record (intake's create writes it; so does the router when it sees the
# classification first). So a classification is stored without it, and `history_records` puts it
# back: about 700 bytes a ticket, a sixth of its history, in Redis's memory and append-only file.
_KEPT_IN_FIRST_RECORD = {"appeal"}


def event_record(event: Event) -> bytes:
    """The event as stored in a history: its JSON with the topic first; a classification without
    its appeal (`AppealClassified.json_without_appeal`)."""
    if isinstance(event, AppealClassified):
        return topic_first(event.topic, event.json_without_appeal())
    return topic_first(event.topic, event.json_bytes)


def history_records(raws: Sequence[bytes | str]) -> list[dict[str, Any]]:
    """A history as stored (`event_record`), read: each record a dict with its `topic`, each
    classification with its appeal again (a copy of the history's `appeal.received`)."""
    records = [json.loads(r) for r in raws]
    first = next((i for i, r in enumerate(records) if r.get("topic") == AppealReceived.topic), None)
    if first is not None:
        for r in records:
            if r.get("topic") == AppealClassified.topic and "appeal" not in r:
                r["appeal"] = appeal = json.loads(raws[first])  # a copy of its own, nested dicts too
                del appeal["topic"]
    return records


def _scrubbed_record(event: Event) -> bytes:
    """`event_record` of the event without personal data (an erased ticket's history): the event's
    own when it has none to remove, as a meeting's facts mostly do (each of them is written with a
    scrubbed copy, in case its ticket was erased: `TicketStore.record_into`)."""
    if not may_carry_personal_data(event.__dict__):
        return event_record(event)
    kept = event.model_dump(
        mode="json", exclude=_KEPT_IN_FIRST_RECORD if isinstance(event, AppealClassified) else None
    )
    return orjson.dumps({"topic": event.topic, **scrub_event(kept)})


def _outbox_member(event: Event) -> str:
    return _outbox_entry(event.topic, event.ticket_no, event.event_id)


def _outbox_entry(topic: str, ticket_no: str, event_id: str) -> str:
    # Small on purpose: the event itself is in the ticket's history; the relay reads it from there.
    return f"{topic}\t{ticket_no}\t{event_id}"


class _Batch:
    """One attempt at a batch write: the tickets read under WATCH as they were and as the decisions
    so far make them, and what is to be written."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.before: dict[str, Ticket | None] = {}
        self.current: dict[str, Ticket | None] = {}
        self.changed: dict[str, Ticket] = {}
        self.history: dict[str, list[bytes]] = {}
        self.outbox: list[str] = []

    async def read(self, nos: Sequence[str]) -> dict[str, Ticket | None]:
        """The tickets as this transaction has them; those not read yet are watched and read (one
        round trip each way)."""
        new = [k for k in dict.fromkeys(ticket_key(n) for n in nos) if k not in self.current]
        if new:
            await self.pipe.watch(*new)
            for k, raw in zip(new, await self.pipe.mget(new), strict=False):
                self.current[k] = self.before[k] = Ticket.model_validate_json(raw) if raw else None
        return {n: self.current[ticket_key(n)] for n in nos}

    def decide(self, changes: Sequence[Change]) -> list[Result]:
        """Apply the decisions in order to the tickets read (each sees the one before it)."""
        results: list[Result] = []
        for c in changes:
            key = ticket_key(c.ticket_no)
            prior = self.current[key]
            outcome = c.decide(prior)
            if outcome is None:
                results.append((prior, []))
                continue
            ticket, facts = outcome.ticket, (*outcome.record, *outcome.publish)
            if prior is None or prior.personal_data_removed_at is None:
                records = [event_record(e) for e in facts]
            else:
                # Erased while this decision's input was on its way (e.g. a classification, which
                # carries the whole appeal). The events it publishes have left already; the copies
                # kept here, which the outbox relay would send again, go scrubbed.
                ticket = scrub_ticket(ticket, prior.personal_data_removed_at)
                records = [_scrubbed_record(e) for e in facts]
            self.current[key] = self.changed[key] = ticket
            self.history.setdefault(key, []).extend(records)
            self.outbox.extend(_outbox_member(e) for e in outcome.publish)
            results.append((ticket, list(outcome.publish)))
        return results


class TicketStore:
    OUTBOX = "outbox"

    def __init__(self, redis: Redis, *, max_retries: int = 4, on_write: OnWrite | None = None) -> None:
        self.redis = redis
        self.max_retries = max_retries
        self.on_write = on_write

    # --- numbering and contacts ----------------------------------------------------------------

    async def next_ticket_no(self, day: date) -> str:
        return (await self.next_ticket_nos(day, 1))[0]

    # A day's counter that does not exist yet is created only with a floor (ARGV[2]): -1 asks the
    # caller for it. So a counter lost with Redis's data never hands out a number twice.
    _NEXT_NOS = """
    if redis.call('EXISTS', KEYS[1]) == 0 then
      if ARGV[2] == '' then return -1 end
      redis.call('SET', KEYS[1], ARGV[2])
    end
    local last = redis.call('INCRBY', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[1], 259200)
    return last
    """

    async def next_ticket_nos(self, day: date, count: int) -> list[str]:
        """`count` consecutive numbers of the day, with one round trip (batch intake)."""
        key = f"seq:{day:%Y%m%d}"
        last = await self.redis.eval(self._NEXT_NOS, 1, key, count, "")
        if last < 0:  # the first numbers of the day, or Redis lost the counter
            last = await self.redis.eval(self._NEXT_NOS, 1, key, count, await self.highest_number(day))
        return [f"{day:%Y%m%d}-{n:06d}" for n in range(last - count + 1, last + 1)]

    async def highest_number(self, day: date) -> int:
        """The highest ticket number of `day` in the store (0: none). A scan of the keys: it runs
        once a day per counter, when the counter is created."""
        highest = 0
        async for key in self.redis.scan_iter(match=f"t:{day:%Y%m%d}-" + "[0-9]" * 6, count=10_000):
            highest = max(highest, int(key[-6:]))
        return highest

    async def raise_counter(self, day: date, floor: int) -> None:
        """Make the day's next number greater than `floor` (the highest number another record, the
        database, has seen for that day)."""
        await self.redis.eval(
            "local v = tonumber(redis.call('GET', KEYS[1]) or '0') "
            "if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', 259200) end",
            1,
            f"seq:{day:%Y%m%d}",
            floor,
        )

    async def save_contact(self, caller_id: str, phone: str, name: str | None) -> None:
        mapping: dict[FieldT, EncodableT] = {"phone": phone}
        if name:
            mapping["name"] = name
        await self.redis.hset(contact_key(caller_id), mapping=mapping)

    async def contact(self, caller_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(contact_key(caller_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    # --- reading ------------------------------------------------------------------------------

    async def get(self, no: str) -> Ticket | None:
        raw = await self.redis.get(ticket_key(no))
        return Ticket.model_validate_json(raw) if raw else None

    async def get_many(self, nos: Sequence[str]) -> list[Ticket | None]:
        if not nos:
            return []
        raws = await self.redis.mget([ticket_key(n) for n in nos])
        return [Ticket.model_validate_json(r) if r else None for r in raws]

    async def history(self, no: str) -> list[dict[str, Any]]:
        return history_records(await self.redis.lrange(history_key(no), 0, -1))

    # --- changing -----------------------------------------------------------------------------

    async def apply_many(self, changes: Sequence[Change], then: Then | None = None) -> list[Result]:
        """Apply decisions to several tickets in one optimistic transaction (one round trip to read,
        one to write). Changes to the same ticket are applied in order. Returns, per change, the
        ticket as it now is and the events to publish; with `then`, the results of the changes it
        added follow, all written in the same transaction (tickets it reads cost one more round trip).

        A batch whose tickets keep changing under it (another handler, the API, a timer) is split
        in halves rather than retried whole forever: one busy ticket must not hold up the others."""
        try:
            return await self._apply_batch(changes, then)
        except ConcurrentUpdate:
            tickets = list(dict.fromkeys(c.ticket_no for c in changes))
            if len(tickets) < 2:
                raise
            first = set(tickets[: len(tickets) // 2])
            halves = [
                [c for c in changes if c.ticket_no in first],
                [c for c in changes if c.ticket_no not in first],
            ]
            done = {}
            added: list[Result] = []
            for half in halves:
                results = await self.apply_many(half, then)
                for c, result in zip(half, results, strict=False):
                    done[id(c)] = result
                added += results[len(half) :]
            return [done[id(c)] for c in changes] + added

    async def _apply_batch(self, changes: Sequence[Change], then: Then | None) -> list[Result]:
        nos = list(dict.fromkeys(c.ticket_no for c in changes))
        for _ in range(self.max_retries):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    batch = _Batch(pipe)
                    await batch.read(nos)
                    results = batch.decide(changes)
                    if then is not None:
                        more = await then(results, batch.read)
                        await batch.read([c.ticket_no for c in more])
                        results += batch.decide(more)
                    if not batch.changed:
                        await pipe.reset()
                        return results
                    pipe.multi()
                    self._write_into(pipe, batch)
                    if self.on_write is not None:
                        self.on_write(pipe, [(batch.before[k], t) for k, t in batch.changed.items()])
                    await pipe.execute()
                    return results
                except WatchError:
                    continue
        raise ConcurrentUpdate(f"tickets kept changing: {', '.join(nos[:5])}")

    def _write_into(self, pipe: Any, batch: _Batch) -> None:
        """The batch's tickets, histories and outbox entries, as commands of the MULTI: one script
        call per `WRITE_CHUNK` tickets (the outbox entries with the last). A flood's batch of 500
        tickets in one call made a command of megabytes, and the C allocator hands a buffer that
        large to the kernel and back at every call: packing it cost about six times what packing
        the same bytes in commands of a few dozen kilobytes does."""
        now = time.time()
        changed = list(batch.changed.items())
        for start in range(0, len(changed), WRITE_CHUNK):
            chunk = changed[start : start + WRITE_CHUNK]
            keys: list[str] = []
            args: list[bytes | str | float] = [now, len(chunk)]
            for key, ticket in chunk:
                records = batch.history.get(key, [])
                keys += [key, f"{key}:h"]
                args += [ticket_json(ticket), len(records), *records]
            if start + WRITE_CHUNK >= len(changed):
                for record in batch.outbox:
                    args += [now, record]
            pipe.eval(_WRITE_BATCH, len(keys) + 1, *keys, self.OUTBOX, *args)

    # Facts appended to histories of tickets that exist; to an erased ticket's (one whose JSON has
    # `personal_data_removed_at`), their scrubbed copies. KEYS: per ticket its key and its history's;
    # ARGV: per ticket the number of records n, the n records, then the same n scrubbed.
    #
    # The mark is read here, where the facts are written, rather than before the MULTI (the tickets
    # under WATCH, or a set of erased numbers asked with SMISMEMBER): that read would cost a round
    # trip per meeting write, watching the tickets would make a meeting retry whenever one of them
    # changes, and a set would be one more key to keep in step with the marks (and to lose with
    # them). Read inside the script it costs no round trip, and no erasure can land between the
    # read and the write (one that lands after rewrites the history scrubbed anyway). The price is a
    # GET and a search per ticket named. A search, not a decode: in a hotspot flood every ticket is
    # attached to its meeting, and decoding its JSON (several kilobytes) took about two thirds of
    # the script's time, with Redis busy for over 10 ms a call. The search is exact: the ticket's
    # JSON is pydantic's compact form, where a quote inside a string is escaped (`\"`), so the
    # field's name followed by `:"` is found only where it has a value, a time (it is left out before).
    _RECORD_FACTS = """
    local a = 1
    for i = 1, #KEYS, 2 do
      local n = tonumber(ARGV[a])
      local raw = n > 0 and redis.call('GET', KEYS[i])
      if raw then
        local first = a + 1
        if string.find(raw, '"personal_data_removed_at":"', 1, true) then first = a + 1 + n end
        redis.call('RPUSH', KEYS[i + 1], unpack(ARGV, first, first + n - 1))
      end
      a = a + 2 * n + 1
    end
    return 0
    """

    def record_into(self, pipe: Any, facts: Sequence[Event]) -> None:
        """Append facts to their tickets' histories, as a command of the caller's transaction: a
        joint meeting's facts, written with the meeting under its WATCH, so exactly once and with
        no ticket to read or write. Not published, not in the outbox: nothing consumes them. An
        erased ticket takes them scrubbed (their explanations and notes are staff's words, which
        may repeat the resident's)."""
        by_ticket: dict[str, list[Event]] = {}
        for e in facts:
            by_ticket.setdefault(e.ticket_no, []).append(e)
        if not by_ticket:
            return
        keys: list[str] = []
        args: list[bytes | int] = []
        for no, events in by_ticket.items():
            keys += [ticket_key(no), history_key(no)]
            args += [len(events), *map(event_record, events), *map(_scrubbed_record, events)]
        pipe.eval(self._RECORD_FACTS, len(keys), *keys, *args)

    # SET NX and the history entry together, per ticket, atomically: no WATCH to collide with the
    # router, which may already be creating the same ticket from the published event.
    _CREATE = """
    local created = 0
    for i = 1, #KEYS, 2 do
      if redis.call('SET', KEYS[i], ARGV[i], 'NX') then
        redis.call('RPUSH', KEYS[i + 1], ARGV[i + 1])
        created = created + 1
      end
    end
    return created
    """

    async def create_many(self, appeals: Sequence[AppealReceived]) -> int:
        """Record new appeals' tickets (the `record_appeal` decision for many, in one round trip):
        a ticket that exists already is left as it is. Returns how many were created."""
        if not appeals:
            return 0
        keys: list[str] = []
        args: list[bytes] = []
        for a in appeals:
            keys += [ticket_key(a.ticket_no), history_key(a.ticket_no)]
            args += [ticket_json(Ticket.from_appeal(a)), event_record(a)]
        return await self.redis.eval(self._CREATE, len(keys), *keys, *args)

    async def remove_personal_data(
        self, no: str, at: datetime | None = None, *, announce_caller: str | None = None
    ) -> bool:
        """Scrub a ticket and its history (`shared.privacy.scrub_event`) and mark the ticket with
        `at`, so that every later write keeps it scrubbed. False: the ticket is not in Redis.

        `announce_caller` (an erasure on request: the caller's hashed id): the same MULTI appends a
        `PersonalDataRemoved` to the history and the outbox, and the outbox relay publishes it, so
        the services that keep their own keys linking the caller to the ticket drop them (none of
        them may be reached into from here). The erasure's process needs no publisher, and the fact
        cannot be lost between the scrub and a publish. Not for a ticket Redis no longer has: its
        other keys have expired as well.

        An earlier erasure's notice still in the outbox is kept as it is: scrubbed, it would lose
        the caller id, no longer parse, and the relay would drop it unsent (two erasures of one
        caller a few seconds apart, or the relay scrubbing after sending another notice of the
        ticket). The relay scrubs it once it has sent it (`shared.bus.relay_outbox`)."""
        at = at or datetime.now(UTC)
        announced = (
            PersonalDataRemoved(ticket_no=no, caller_id=announce_caller, occurred_at=at)
            if announce_caller
            else None
        )
        for _ in range(self.max_retries):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    # The history too: a meeting's facts are appended to it without the ticket's WATCH.
                    await pipe.watch(ticket_key(no), history_key(no))
                    raw = await pipe.get(ticket_key(no))
                    history = await pipe.lrange(history_key(no), 0, -1)
                    records = [json.loads(h) for h in history]
                    unsent = await self._unsent_notices(pipe, no, records)
                    pipe.multi()
                    if raw:
                        ticket = Ticket.model_validate_json(raw)
                        ticket = scrub_ticket(ticket, ticket.personal_data_removed_at or at)
                        pipe.set(ticket_key(no), ticket_json(ticket))
                    if history:
                        pipe.delete(history_key(no))
                        pipe.rpush(
                            history_key(no),
                            *[
                                h
                                if r.get("event_id") in unsent
                                else json.dumps(scrub_event(r), ensure_ascii=False)
                                for h, r in zip(history, records, strict=True)
                            ],
                        )
                    if raw and announced is not None:
                        # After the scrubbed history: this copy keeps the hash until the relay has
                        # sent it, and then scrubs the history again (`shared.bus.relay_outbox`).
                        pipe.rpush(history_key(no), event_record(announced))
                        pipe.zadd(self.OUTBOX, {_outbox_member(announced): time.time()})
                    await pipe.execute()
                    return bool(raw)
                except WatchError:
                    continue
        raise ConcurrentUpdate(f"ticket kept changing: {no}")

    async def _unsent_notices(self, pipe: Any, no: str, records: Sequence[dict[str, Any]]) -> set[str]:
        """The ids of the erasure notices among a ticket's history records that the outbox still
        holds (not sent yet). No round trip unless the history holds a notice: a ticket erased
        before, which is rare. Read under the history's WATCH, not the outbox's: the relay removes
        a notice's entry before it scrubs the history, so a scrub that read the entry as still
        there either lands first (and the relay's scrub, which comes after, finds it gone) or is
        retried."""
        notices = [r["event_id"] for r in records if r.get("topic") == PersonalDataRemoved.topic]
        if not notices:
            return set()
        entries = [_outbox_entry(PersonalDataRemoved.topic, no, event_id) for event_id in notices]
        scores = await pipe.zmscore(self.OUTBOX, entries)
        return {event_id for event_id, score in zip(notices, scores, strict=True) if score is not None}

    async def keep_erased(self, marks: Mapping[str, datetime]) -> list[str]:
        """Tickets the record has erased (number -> when): any of them that Redis holds without the
        mark is erased (`remove_personal_data`, with the record's time) and announced, with the
        caller id it still carries, as an erasure on request is. One read for them all; the erasure
        only where it is missing. Returns the numbers erased here. The record comes here with:

        - appeals that reached it after their caller's erasure (`Records._erased_on_their_way`):
          the erasure did not find them, so Redis has them as intake wrote them, and intake's caller
          index and `wx:last`, and the notifier's records of the acknowledgement, link the caller
          to them; only the notice removes those;
        - tickets it erased that Redis lost, which an appeal still on its way rebuilt (the router
          makes a ticket it does not find from the classified appeal), with the resident's words
          and contact. Announced again too: the notice of the first erasure may have been lost
          with them (the outbox is in the same Redis), and the rebuilt ticket's events name the
          caller again (the notifier may have texted them). Intake and the notifier take a notice
          again at no harm: they remove what is there."""
        if not marks:
            return []
        nos = list(marks)
        again = [
            (no, ticket.caller.caller_id)
            for no, ticket in zip(nos, await self.get_many(nos), strict=True)
            if ticket is not None and ticket.personal_data_removed_at is None
        ]
        for no, caller in again:
            await self.remove_personal_data(no, marks[no], announce_caller=caller)
        return [no for no, _ in again]

    async def is_erased(self, no: str) -> bool:
        """Whether the ticket carries the mark of an erasure (a ticket Redis no longer holds does
        not). Reads the one field, without validating the whole ticket: the read-time checks of
        the services that keep their own keys about a ticket (see `remove_personal_data`) call it
        where a notice they missed would otherwise let them use those keys."""
        raw = await self.redis.get(ticket_key(no))
        return raw is not None and json.loads(raw).get("personal_data_removed_at") is not None

    # --- the outbox ---------------------------------------------------------------------------

    async def published(self, events: Sequence[Event]) -> None:
        if events:
            await self.redis.zrem(self.OUTBOX, *[_outbox_member(e) for e in events])

    async def due_outbox(
        self, older_than_seconds: float, limit: int = 500
    ) -> dict[str, tuple[str, dict[str, Any]]]:
        """Events written more than `older_than_seconds` ago and still not confirmed published:
        outbox entry -> (topic, event as a dict), read back from the tickets' histories."""
        cutoff = time.time() - older_than_seconds
        members = [
            _text(m) for m in await self.redis.zrangebyscore(self.OUTBOX, "-inf", cutoff, start=0, num=limit)
        ]
        wanted: dict[str, dict[str, str]] = {}  # ticket -> event id -> entry
        for m in members:
            _, ticket_no, event_id = m.split("\t")
            wanted.setdefault(ticket_no, {})[event_id] = m
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for ticket_no, ids in wanted.items():
            for record in await self.history(ticket_no):
                if (entry := ids.get(record["event_id"])) is not None:
                    found[entry] = (record.pop("topic"), record)
        # An entry whose event is not in any history cannot be relayed: drop it, loudly.
        lost = [m for m in members if m not in found]
        if lost:
            await self.remove_outbox_entries(lost)
        return found

    async def remove_outbox_entries(self, entries: Sequence[str]) -> None:
        if entries:
            await self.redis.zrem(self.OUTBOX, *entries)


async def apply_and_publish(
    store: TicketStore,
    changes: Sequence[Change],
    publish: Callable[[Sequence[Event]], Awaitable[None]],
    then: Then | None = None,
) -> list[Result]:
    """Write the decisions (and what `then` adds, see `apply_many`), publish their events
    (acknowledged), then clear them from the outbox."""
    results = await store.apply_many(changes, then)
    events = [e for _, evs in results for e in evs]
    if events:
        await publish(events)
        await store.published(events)
    return results
