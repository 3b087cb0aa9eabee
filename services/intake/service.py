"""Turning validated submissions into numbered, durable appeals.

Order matters for "never lost, never acknowledged early":
  1. claim the idempotency keys (a retry returns the first ticket number, never a second one);
  2. count the callers against their hourly limit;
  3. take the next numbers of the day (one INCRBY for a whole batch);
  4. publish the `appeal.received` events and wait for the broker's acks=all;
  5. only then record the tickets and the callers' contacts, and answer with the numbers.
If the broker does not acknowledge, the claims are released and the caller gets BrokerUnavailable
(HTTP 503 with Retry-After): the numbers are burnt, nothing else remains.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from services.intake.app import CALLER_INDEX_TTL, caller_key
from services.intake.domain import Submission
from services.intake.limits import RateLimited, RateLimiter, caller_limited
from shared.bus import EventPublisher, publish
from shared.events import AppealLocated, AppealReceived, GeoPoint
from shared.metrics import APPEALS_RECEIVED
from shared.store import Change, Outcome, TicketStore, apply_and_publish
from shared.tickets import Ticket

log = logging.getLogger(__name__)
IDEMPOTENCY_TTL = 7 * 86400
# A claim outlives any honest attempt (publish timeout 10 s) but not a crashed process: a retry
# after that goes through instead of waiting on a claim nobody will finish.
PENDING_TTL = 60
TICKETS_BY_TIME = "intake:tickets"  # every ticket number, scored by receipt time (Open311 listing)
WECHAT_LOCATION_TTL = 30 * 60  # a location message applies to appeals within 30 minutes of it


class BrokerUnavailable(RuntimeError):
    """The appeal could not be durably written; ask the client to retry."""


@dataclass(frozen=True)
class Accepted:
    ticket_no: str
    created: bool  # False: the idempotency key was seen before, this is the first ticket's number


Result = Accepted | RateLimited


def idem_key(key: str) -> str:
    return f"idem:{key}"


class IntakeService:
    def __init__(
        self,
        publisher: EventPublisher,
        store: TicketStore,
        *,
        timezone: str,
        publish_timeout: float = 10,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.publisher = publisher
        self.store = store
        self.redis: Redis = store.redis
        self.tz = ZoneInfo(timezone)
        self.publish_timeout = publish_timeout
        self.limiter = limiter

    def today(self):
        return datetime.now(self.tz).date()

    async def check_ip(self, ip: str | None, cost: int = 1) -> None:
        """Raises RateLimited when this client IP submits too often."""
        if self.limiter is not None:
            await self.limiter.check_ip(ip, cost)

    async def existing(self, idempotency_key: str) -> str | None:
        """The ticket number an earlier submission with this key got, if it completed."""
        value = await self.redis.get(idem_key(idempotency_key))
        if value is None:
            return None
        value = value.decode()
        return None if value == "pending" else value

    async def submit(self, sub: Submission, idempotency_key: str | None = None) -> tuple[str, bool]:
        """Returns (ticket number, created). Raises RateLimited or BrokerUnavailable."""
        (result,) = await self.submit_many([(sub, idempotency_key)])
        if isinstance(result, RateLimited):
            raise result
        return result.ticket_no, result.created

    async def submit_many(self, items: Sequence[tuple[Submission, str | None]]) -> list[Result]:
        """Submit a chunk (one appeal or a few hundred rows of a batch) with a handful of round trips.
        Per item: Accepted, or RateLimited for a caller over the limit. Raises BrokerUnavailable."""
        results: list[Result | None] = [None] * len(items)
        todo, claimed = await self._claim([k for _, k in items], results)
        chunk = _Chunk(items, todo, claimed, results)
        chunk.todo = await self._within_limits(chunk)
        if chunk.todo:
            await self._publish_and_record(chunk)
        for i, r in enumerate(results):
            if isinstance(r, _Copy):
                first = results[r.original]
                results[i] = (
                    Accepted(first.ticket_no, created=False) if isinstance(first, Accepted) else first
                )
        return results  # type: ignore[return-value]

    async def _claim(
        self, keys: Sequence[str | None], results: list[Result | None]
    ) -> tuple[list[int], dict[int, str]]:
        """Claim idempotency keys. Items whose key already has a ticket get it; a key that appears
        twice in the chunk gets the first one's ticket. Returns the items to process and, of those,
        the keys this call claimed (item index -> key)."""
        first: dict[str, int] = {}
        todo: list[int] = []
        copies: list[tuple[int, int]] = []
        for i, k in enumerate(keys):
            if k is None:
                todo.append(i)
            elif k in first:
                copies.append((i, first[k]))
            else:
                first[k] = i
        waiting = dict(first)
        for _ in range(50):  # another request with the same key may be mid-flight
            if not waiting:
                break
            async with self.redis.pipeline(transaction=False) as p:
                for k in waiting:
                    p.set(idem_key(k), "pending", nx=True, ex=PENDING_TTL)
                got = await p.execute()
            still: dict[str, int] = {}
            held = [k for k, ok in zip(waiting, got, strict=False) if not ok]
            done = await self.redis.mget([idem_key(k) for k in held]) if held else []
            for k, ok in zip(waiting, got, strict=False):
                if ok:
                    todo.append(waiting[k])
            for k, value in zip(held, done, strict=False):
                if value is not None and value != b"pending":
                    results[waiting[k]] = Accepted(value.decode(), created=False)
                else:
                    still[k] = waiting[k]
            waiting = still
            if waiting:
                await asyncio.sleep(0.1)
        if waiting:
            await self._release([k for k in first if first[k] in todo])
            raise BrokerUnavailable("the same submission is still being processed")
        for copy, original in copies:
            results[copy] = _Copy(original)  # type: ignore[assignment]
        todo.sort()
        return todo, {i: keys[i] for i in todo if keys[i] is not None}  # type: ignore[misc]

    async def _within_limits(self, chunk: _Chunk) -> list[int]:
        """The items whose caller is within the hourly limit; the others get RateLimited."""
        items, todo, claimed, results = chunk.items, chunk.todo, chunk.claimed, chunk.results
        if self.limiter is None:
            return todo
        ids = [items[i][0].caller.caller_id for i in todo]
        over = await self.limiter.callers_over(c for c in ids if c)
        if not over:
            return todo
        refused = [i for i, c in zip(todo, ids, strict=False) if c in over]
        for i, c in zip(todo, ids, strict=False):
            if c in over:
                results[i] = caller_limited(over[c])
        await self._release([claimed[i] for i in refused if i in claimed])
        return [i for i in todo if results[i] is None]

    async def _release(self, keys: Sequence[str]) -> None:
        if keys:
            await self.redis.delete(*[idem_key(k) for k in keys])

    async def _publish_and_record(self, chunk: _Chunk) -> None:
        items, todo, claimed, results = chunk.items, chunk.todo, chunk.claimed, chunk.results
        keys = [claimed[i] for i in todo if i in claimed]
        subs = [items[i][0] for i in todo]
        # The contact before the event: the notifier may read the event, and look up the phone to
        # acknowledge it by SMS, before the broker's ack even reaches us.
        new_contacts = await self._save_contacts(subs)
        try:
            numbers = await self.store.next_ticket_nos(self.today(), len(todo))
            events = [await self._appeal_event(no, sub) for no, sub in zip(numbers, subs, strict=False)]
            await asyncio.wait_for(publish(self.publisher, events), self.publish_timeout)
        except Exception as e:
            await self._release(keys)
            if new_contacts:  # no appeal refers to them
                await self.redis.delete(*new_contacts)
            log.warning("%d appeal(s) not accepted, broker did not acknowledge: %r", len(todo), e)
            raise BrokerUnavailable(str(e)) from e
        # Durable from here on: the router would create the tickets from the events even if we died.
        async with self.redis.pipeline(transaction=False) as p:
            for sub, event in zip(subs, events, strict=False):
                cid = event.caller.caller_id
                if cid:  # the worker indexes it too; here, so that a preview a second later sees it
                    p.sadd(caller_key(cid), event.ticket_no)
                    p.expire(caller_key(cid), CALLER_INDEX_TTL)
                if sub.wechat_openid and not sub.phone:
                    p.set(wechat_last_key(cid), event.ticket_no, ex=WECHAT_LOCATION_TTL)
                p.zadd(TICKETS_BY_TIME, {event.ticket_no: event.received_at.timestamp()})
            await p.execute()
        await self.store.create_many(events)
        async with self.redis.pipeline(transaction=False) as p:
            for i, event in zip(todo, events, strict=False):
                results[i] = Accepted(event.ticket_no, created=True)
                if i in claimed:
                    p.set(idem_key(claimed[i]), event.ticket_no, ex=IDEMPOTENCY_TTL)
            await p.execute()
        for sub in subs:
            APPEALS_RECEIVED.labels(channel=sub.channel).inc()

    async def _save_contacts(self, subs: Sequence[Submission]) -> list[str]:
        """Write the callers' contact records; returns the keys of those that did not exist before."""
        contacts: dict[str, dict[FieldT, EncodableT]] = {}
        for sub in subs:
            cid = sub.caller.caller_id
            if cid and sub.phone:
                contacts[f"contact:{cid}"] = {"phone": sub.phone, **({"name": sub.name} if sub.name else {})}
            elif cid and sub.wechat_openid:
                contacts[f"contact:{cid}"] = {"wechat_openid": sub.wechat_openid}
        if not contacts:
            return []
        async with self.redis.pipeline(transaction=False) as p:
            for key, mapping in contacts.items():
                p.exists(key)
                p.hset(key, mapping=mapping)
            replies = await p.execute()
        return [key for key, existed in zip(contacts, replies[::2], strict=True) if not existed]

    async def _appeal_event(self, ticket_no: str, sub: Submission) -> AppealReceived:
        location, address = sub.location, sub.address
        if sub.wechat_openid and location is None:
            # A location the user sent just before this message belongs to it.
            held = await self.redis.get(wechat_location_key(sub.caller.caller_id))
            if held is not None:
                place = json.loads(held)
                location = GeoPoint(lng=place["lng"], lat=place["lat"])
                address = address or place["label"]
        return AppealReceived(
            ticket_no=ticket_no,
            channel=sub.channel,
            text=sub.text,
            title=sub.title,
            address=address,
            location=location,
            caller=sub.caller,
            urgent_flag=sub.urgent,
            operator_id=sub.operator_id,
        )

    # --- WeChat locations -------------------------------------------------------------------------

    async def locate(self, caller_id: str, msg_id: str, point: GeoPoint, label: str) -> str | None:
        """A location message: kept for the user's next appeal (30 minutes), and applied to the last
        one if it came in the last 30 minutes and is still open. Returns that ticket number."""
        place = json.dumps({"lng": point.lng, "lat": point.lat, "label": label}, ensure_ascii=False)
        await self.redis.set(wechat_location_key(caller_id), place, ex=WECHAT_LOCATION_TTL)
        last = await self.redis.get(wechat_last_key(caller_id))
        if last is None:
            return None
        ticket_no = last.decode()
        located = AppealLocated(
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"wechat-location/{msg_id}").hex,
            ticket_no=ticket_no,
            channel="wechat",
            location=point,
            address=label,
        )
        results = await apply_and_publish(
            self.store,
            [Change(ticket_no, partial(apply_location, located=located))],
            partial(publish, self.publisher),
        )
        ticket = results[0][0]
        return ticket_no if ticket is not None and ticket.location == point else None


def apply_location(ticket: Ticket | None, located: AppealLocated) -> Outcome | None:
    """Decision: put the place on an open ticket (once per message)."""
    if ticket is None or ticket.has_applied(located.event_id) or not ticket.is_open:
        return None
    updated = ticket.model_copy(
        update={
            "location": located.location,
            "address": ticket.address or located.address,
            "applied": [*ticket.applied, located.event_id],
            "updated_at": located.occurred_at,
        }
    )
    return Outcome(updated, publish=[located])


def wechat_location_key(caller_id: str | None) -> str:
    return f"wx:loc:{caller_id}"


def wechat_last_key(caller_id: str | None) -> str:
    return f"wx:last:{caller_id}"


@dataclass
class _Chunk:
    """Submissions on their way: which are still to do, the idempotency keys claimed for them
    (item index -> key), and each item's result so far."""

    items: Sequence[tuple[Submission, str | None]]
    todo: list[int]
    claimed: dict[int, str]
    results: list[Result | None]


class _Copy:
    """Placeholder for an item whose idempotency key repeats an earlier item of the same chunk."""

    def __init__(self, original: int) -> None:
        self.original = original
