"""Turning validated submissions into numbered, durable appeals.

Order matters for "never lost, never acknowledged early, never twice":
  1. a submission whose idempotency key is known resumes it: the same body gets the number the
     key holds (published again if it was never answered), another body is refused (KeyReused);
  2. new submissions count against their caller's hourly limit;
  3. they take the next numbers of the day (one INCRBY for a whole batch), and each key is claimed
     with its body's hash and its number in the same step: from here on, whatever fails, a retry
     with the key ends at this number;
  4. the `appeal.received` events are published (with a keyed submission, under an id that follows
     from the key) and the broker's acks=all awaited;
  5. only then the tickets, the callers' contacts and the indexes are recorded, the claims marked
     answered, and the numbers answered.
Broker down at 4: BrokerUnavailable (HTTP 503 with Retry-After); Redis down at 5: Redis's error
(503 too). Either way the claim keeps the number, and the retry publishes the same fact again,
which every consumer drops as already seen. Without a key, a failed submission's number is burnt.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from services.intake import keys
from services.intake.domain import Submission, located, photographed
from services.intake.errors import BrokerUnavailable, KeyReused, RateLimited
from services.intake.limits import RateLimiter, caller_limited
from shared.bus import EventPublisher, publish
from shared.events import AppealLocated, AppealPhotosAdded, AppealReceived, GeoPoint, derived_id, new_id
from shared.metrics import APPEALS_RECEIVED
from shared.photos import MAX_PER_ITEM
from shared.redis_client import text
from shared.store import Change, Outcome, TicketStore, apply_and_publish, contact_key
from shared.tickets import Ticket

log = logging.getLogger(__name__)
IDEMPOTENCY_TTL = 7 * 86400
WECHAT_LOCATION_TTL = 30 * 60  # a location message applies to appeals within 30 minutes of it
CALLER_INDEX_TTL = 90 * 86400  # a caller's open-ticket index outlives any ticket's life

__all__ = ["Accepted", "BrokerUnavailable", "IntakeService", "Result"]


@dataclass(frozen=True)
class Accepted:
    ticket_no: str
    created: bool  # False: the idempotency key was seen before, this is its ticket's number


Result = Accepted | RateLimited | KeyReused


class IntakeService:
    def __init__(
        self,
        publisher: EventPublisher,
        store: TicketStore,
        *,
        timezone: str,
        publish_timeout: float = 10,
        limiter: RateLimiter | None = None,
        public_channels: frozenset[str] = frozenset({"open311"}),
    ) -> None:
        self.publisher = publisher
        self.store = store
        self.redis: Redis = store.redis
        self.tz = ZoneInfo(timezone)
        self.publish_timeout = publish_timeout
        self.limiter = limiter
        self.public_channels = public_channels  # their tickets are listed by Open311's public GET

    def today(self):
        return datetime.now(self.tz).date()

    async def check_ip(self, ip: str | None, cost: int = 1) -> None:
        """Raises RateLimited when this client IP submits too often."""
        if self.limiter is not None:
            await self.limiter.check_ip(ip, cost)

    async def submit(self, sub: Submission, idempotency_key: str | None = None) -> tuple[str, bool]:
        """Returns (ticket number, created). Raises RateLimited, KeyReused or BrokerUnavailable."""
        (result,) = await self.submit_many([(sub, idempotency_key)])
        if isinstance(result, RateLimited | KeyReused):
            raise result
        return result.ticket_no, result.created

    async def submit_many(self, items: Sequence[tuple[Submission, str | None]]) -> list[Result]:
        """Submit a chunk (one appeal or a few hundred rows of a batch) with a handful of round trips.
        Per item: Accepted; RateLimited for a caller over the limit; KeyReused for a key that came
        with another body. Raises BrokerUnavailable, or Redis's own error when Redis is away."""
        chunk = _Chunk(items)
        await self._resume_claimed(chunk)
        await self._within_limits(chunk)
        await self._claim_numbers(chunk)
        if chunk.to_publish:
            await self._publish_and_record(chunk)
        return chunk.decided()

    async def _resume_claimed(self, chunk: _Chunk) -> None:
        """Keys seen before: the same body gets the first submission's number (finished, or to be
        published again), another body is refused. A key repeated inside the chunk gets the first
        item's answer."""
        first: dict[str, int] = {}
        for i, (_, key) in enumerate(chunk.items):
            if key is None:
                chunk.new.append(i)
            elif key in first:
                chunk.copies[i] = first[key]
            else:
                first[key] = i
        if not first:
            return
        found = await self.redis.mget([keys.idempotency(k) for k in first])
        for i, raw in zip(first.values(), found, strict=True):
            claim = None if raw is None else Claim.loads(raw)
            if claim is None:
                chunk.new.append(i)
            else:
                self._settle(chunk, i, claim)
        chunk.new.sort()

    def _settle(self, chunk: _Chunk, i: int, claim: Claim) -> None:
        """An item whose key holds `claim`."""
        sub, _ = chunk.items[i]
        if claim.digest and claim.digest != sub.digest():
            chunk.results[i] = KeyReused(claim.ticket_no)
        elif claim.done:
            chunk.results[i] = Accepted(claim.ticket_no, created=False)
        else:
            # Numbered, perhaps published, never answered (the broker or Redis failed on the way):
            # publishing it again under the same event id is harmless, and the caller gets its number.
            chunk.numbers[i] = claim.ticket_no
            chunk.results[i] = _Resumed()
            chunk.to_publish.append(i)

    async def _within_limits(self, chunk: _Chunk) -> None:
        """New items whose caller is over the hourly limit get RateLimited (a retry never counts)."""
        if self.limiter is None or not chunk.new:
            return
        ids = [chunk.items[i][0].caller.caller_id for i in chunk.new]
        over = await self.limiter.callers_over(c for c in ids if c)
        if over:
            for i, c in zip(chunk.new, ids, strict=True):
                if c in over:
                    chunk.results[i] = caller_limited(over[c])
            chunk.new = [i for i in chunk.new if chunk.results[i] is None]

    async def _claim_numbers(self, chunk: _Chunk) -> None:
        """Numbers for the new items, and the claims that tie each key to its body and number, so
        that from here on every attempt with the key ends at this number. A claim lost to a
        concurrent request with the same key settles the item as that request's (its number burnt)."""
        if not chunk.new:
            return
        numbers = await self.store.next_ticket_nos(self.today(), len(chunk.new))
        keyed = [(i, no) for i, no in zip(chunk.new, numbers, strict=True) if chunk.items[i][1]]
        won: list[bool] = []
        if keyed:
            async with self.redis.pipeline(transaction=False) as p:
                for i, no in keyed:
                    sub, key = chunk.items[i]
                    mine = Claim(sub.digest(), no, done=False)
                    p.set(keys.idempotency(key or ""), mine.dumps(), nx=True, ex=IDEMPOTENCY_TTL)
                won = [bool(ok) for ok in await p.execute()]
        lost = {i for (i, _), ok in zip(keyed, won, strict=True) if not ok}
        for i, no in zip(chunk.new, numbers, strict=True):
            if i not in lost:
                chunk.numbers[i] = no
                chunk.to_publish.append(i)
        if lost:
            found = await self.redis.mget([keys.idempotency(chunk.items[i][1] or "") for i in sorted(lost)])
            for i, raw in zip(sorted(lost), found, strict=True):
                claim = None if raw is None else Claim.loads(raw)
                if claim is None:  # held by an older process's placeholder: let the client retry
                    raise BrokerUnavailable("idempotency claim not settled")
                self._settle(chunk, i, claim)
        chunk.to_publish.sort()

    async def _publish_and_record(self, chunk: _Chunk) -> None:
        todo = chunk.to_publish
        subs = [chunk.items[i][0] for i in todo]
        events = [await self._appeal_event(chunk.numbers[i], chunk.items[i]) for i in todo]
        # The contact before the event: the notifier may read the event, and look up the phone to
        # acknowledge it by SMS, before the broker's ack even reaches us.
        new_contacts = await self._save_contacts(subs)
        try:
            await asyncio.wait_for(publish(self.publisher, events), self.publish_timeout)
        except Exception as e:
            # Claims stay: a retry with the same key publishes the same number again (and writes
            # its contact again first); contacts no appeal refers to are not kept.
            if new_contacts:
                await self.redis.delete(*new_contacts)
            log.warning("%d appeal(s) not accepted, broker did not acknowledge: %r", len(todo), e)
            raise BrokerUnavailable(str(e)) from e
        # Durable from here on: the router would create the tickets from the events even if we died.
        await self._record(subs, events)
        async with self.redis.pipeline(transaction=False) as p:
            for i, event in zip(todo, events, strict=True):
                sub, key = chunk.items[i]
                resumed = isinstance(chunk.results[i], _Resumed)
                chunk.results[i] = Accepted(event.ticket_no, created=not resumed)
                if key:
                    done = Claim(sub.digest(), event.ticket_no, done=True)
                    p.set(keys.idempotency(key), done.dumps(), ex=IDEMPOTENCY_TTL)
                if not resumed:
                    APPEALS_RECEIVED.labels(channel=sub.channel).inc()
            await p.execute()

    async def _record(self, subs: Sequence[Submission], events: Sequence[AppealReceived]) -> None:
        """What intake keeps beside the published appeals: contacts, indexes, the tickets."""
        async with self.redis.pipeline(transaction=False) as p:
            for sub, event in zip(subs, events, strict=True):
                cid = event.caller.caller_id
                if cid:  # the worker indexes it too; here, so that a preview a second later sees it
                    p.sadd(keys.caller_index(cid), event.ticket_no)
                    p.expire(keys.caller_index(cid), CALLER_INDEX_TTL)
                if cid and sub.wechat_openid and not sub.phone:
                    p.set(keys.wechat_last(cid), event.ticket_no, ex=WECHAT_LOCATION_TTL)
                    if event.photos:  # the photos sent before it are its own now
                        p.delete(keys.wechat_photos(cid))
                if sub.channel in self.public_channels:
                    p.zadd(keys.PUBLIC_BY_TIME, {event.ticket_no: event.received_at.timestamp()})
            await p.execute()
        await self.store.create_many(events)

    async def _save_contacts(self, subs: Sequence[Submission]) -> list[str]:
        """Write the callers' contact records; returns the keys of those that did not exist before."""
        contacts: dict[str, dict[FieldT, EncodableT]] = {}
        for sub in subs:
            cid = sub.caller.caller_id
            if cid and sub.phone:
                contacts[contact_key(cid)] = {"phone": sub.phone, **({"name": sub.name} if sub.name else {})}
            elif cid and sub.wechat_openid:
                contacts[contact_key(cid)] = {"wechat_openid": sub.wechat_openid}
        if not contacts:
            return []
        async with self.redis.pipeline(transaction=False) as p:
            for key, mapping in contacts.items():
                p.exists(key)
                p.hset(key, mapping=mapping)
            replies = await p.execute()
        return [key for key, existed in zip(contacts, replies[::2], strict=True) if not existed]

    async def _appeal_event(self, ticket_no: str, item: tuple[Submission, str | None]) -> AppealReceived:
        """The event for a numbered submission. With an idempotency key its id follows from the key,
        so the event published again on a retry is the same fact, dropped by every consumer."""
        sub, key = item
        event_id = derived_id(f"appeal/{key}") if key else new_id()
        location, address = sub.location, sub.address
        photos: tuple[str, ...] = ()
        if sub.wechat_openid:
            # A location and photos the user sent just before this message belong to it.
            cid = sub.caller.caller_id
            held, held_photos = await asyncio.gather(
                self.redis.get(keys.wechat_location(cid)), self.redis.lrange(keys.wechat_photos(cid), 0, -1)
            )
            if held is not None and location is None:
                place = json.loads(held)
                location = GeoPoint(lng=place["lng"], lat=place["lat"])
                address = address or place["label"]
            photos = tuple(text(p) for p in held_photos)
        return sub.appeal(ticket_no, event_id=event_id, address=address, location=location, photos=photos)

    # --- WeChat locations -------------------------------------------------------------------------

    async def locate(self, caller_id: str, msg_id: str, point: GeoPoint, label: str) -> str | None:
        """A location message: kept for the user's next appeal (30 minutes), and applied to the last
        one if it came in the last 30 minutes and is still open. Returns that ticket number."""
        place = json.dumps({"lng": point.lng, "lat": point.lat, "label": label}, ensure_ascii=False)
        await self.redis.set(keys.wechat_location(caller_id), place, ex=WECHAT_LOCATION_TTL)
        last = await self.redis.get(keys.wechat_last(caller_id))
        if last is None:
            return None
        ticket_no = text(last)
        place_event = AppealLocated(
            event_id=derived_id(f"wechat-location/{msg_id}"),
            ticket_no=ticket_no,
            channel="wechat",
            location=point,
            address=label,
        )
        results = await apply_and_publish(
            self.store,
            [Change(ticket_no, partial(apply_location, place=place_event))],
            partial(publish, self.publisher),
        )
        ticket = results[0][0]
        return ticket_no if ticket is not None and ticket.location == point else None

    # --- WeChat photos ----------------------------------------------------------------------------

    async def add_photo(self, caller_id: str, msg_id: str, photo_id: str) -> str | None:
        """A photo from an image message (kept already): added to the user's last appeal if it came
        in the last 30 minutes and is still open, else kept for their next appeal (30 minutes, the
        last 9). Returns the ticket number it was added to."""
        last = await self.redis.get(keys.wechat_last(caller_id))
        if last is not None:
            ticket_no = text(last)
            added = AppealPhotosAdded(
                event_id=derived_id(f"wechat-image/{msg_id}"),
                ticket_no=ticket_no,
                channel="wechat",
                photos=(photo_id,),
            )
            results = await apply_and_publish(
                self.store,
                [Change(ticket_no, partial(apply_photos, added=added))],
                partial(publish, self.publisher),
            )
            ticket = results[0][0]
            if ticket is not None and photo_id in ticket.photos:
                return ticket_no
        async with self.redis.pipeline(transaction=True) as p:
            p.rpush(keys.wechat_photos(caller_id), photo_id)
            p.ltrim(keys.wechat_photos(caller_id), -MAX_PER_ITEM, -1)
            p.expire(keys.wechat_photos(caller_id), WECHAT_LOCATION_TTL)
            await p.execute()
        return None


def apply_photos(ticket: Ticket | None, added: AppealPhotosAdded) -> Outcome | None:
    """The store's decision around the pure photo rule (`domain.photographed`)."""
    updated = photographed(ticket, added)
    return None if updated is None else Outcome(updated, publish=[added])


def apply_location(ticket: Ticket | None, place: AppealLocated) -> Outcome | None:
    """The store's decision around the pure location rule (`domain.located`): the changed ticket,
    and the fact to publish."""
    updated = located(ticket, place)
    return None if updated is None else Outcome(updated, publish=[place])


@dataclass(frozen=True)
class Claim:
    """What an idempotency key holds: the hash of the body it first came with, the number that body
    got, and whether the caller was answered. Kept for IDEMPOTENCY_TTL either way: a claim whose
    answer never left is how a retry finds its number."""

    digest: str
    ticket_no: str
    done: bool

    def dumps(self) -> str:
        return json.dumps({"h": self.digest, "no": self.ticket_no, "done": self.done})

    @classmethod
    def loads(cls, raw: bytes | str) -> Claim | None:
        """None for a claim that holds nothing yet. Keys written before claims held JSON held the
        bare ticket number (or "pending"): their body is unknown, so any body matches them."""
        value = text(raw)
        if not value.startswith("{"):
            return None if value == "pending" else cls("", value, done=True)
        data = json.loads(value)
        return cls(data["h"], data["no"], bool(data["done"]))


class _Resumed:
    """Marks an item that resumes an earlier, unanswered submission (not counted as received again)."""


@dataclass
class _Chunk:
    """Submissions on their way: the new ones, those to publish with their numbers, repeated keys
    (item -> the item it repeats), and each item's result so far."""

    items: Sequence[tuple[Submission, str | None]]
    new: list[int] = field(default_factory=list)
    to_publish: list[int] = field(default_factory=list)
    numbers: dict[int, str] = field(default_factory=dict)
    copies: dict[int, int] = field(default_factory=dict)
    results: list[Result | _Resumed | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)

    def decided(self) -> list[Result]:
        out: list[Result] = []
        for i, r in enumerate(self.results):
            if i in self.copies:  # a repeated key within the chunk: the first item's answer
                r = self.results[self.copies[i]]
                r = Accepted(r.ticket_no, created=False) if isinstance(r, Accepted) else r
            if not isinstance(r, Accepted | RateLimited | KeyReused):
                raise RuntimeError("an item of the chunk was left undecided")
            out.append(r)
        return out
