"""Turning a validated submission into a numbered, durable appeal.

Order matters for "never lost, never acknowledged early":
  1. claim the idempotency key (a retry returns the first ticket number, never a second one);
  2. take the next number of the day;
  3. publish `appeal.received` and wait for the broker's acks=all;
  4. only then record the ticket and the caller's contact, and answer with the number.
If the broker does not acknowledge, the claim is released and the caller gets BrokerUnavailable
(HTTP 503 with Retry-After): the number is burnt, nothing else remains.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from functools import partial
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from services.intake.domain import Submission
from shared.bus import EventPublisher, publish
from shared.events import AppealReceived
from shared.metrics import APPEALS_RECEIVED
from shared.store import Change, TicketStore, record_appeal

log = logging.getLogger(__name__)
IDEMPOTENCY_TTL = 7 * 86400


class BrokerUnavailable(RuntimeError):
    """The appeal could not be durably written; ask the client to retry."""


class IntakeService:
    def __init__(
        self, publisher: EventPublisher, store: TicketStore, *, timezone: str, publish_timeout: float = 10
    ) -> None:
        self.publisher = publisher
        self.store = store
        self.redis: Redis = store.redis
        self.tz = ZoneInfo(timezone)
        self.publish_timeout = publish_timeout

    async def existing(self, idempotency_key: str) -> str | None:
        """The ticket number an earlier submission with this key got, if it completed."""
        value = await self.redis.get(f"idem:{idempotency_key}")
        if value is None:
            return None
        value = value.decode()
        return None if value == "pending" else value

    async def submit(self, sub: Submission, idempotency_key: str | None = None) -> tuple[str, bool]:
        """Returns (ticket number, created). `created` is False when the key was seen before."""
        key = f"idem:{idempotency_key}" if idempotency_key else None
        if key is not None:
            for _ in range(50):  # another request with the same key may be mid-flight
                if await self.redis.set(key, "pending", nx=True, ex=IDEMPOTENCY_TTL):
                    break
                done = await self.existing(idempotency_key)
                if done:
                    return done, False
                await asyncio.sleep(0.1)
            else:
                raise BrokerUnavailable("the same submission is still being processed")
        try:
            ticket_no = await self.store.next_ticket_no(datetime.now(self.tz).date())
            event = AppealReceived(
                ticket_no=ticket_no, channel=sub.channel, text=sub.text, title=sub.title,
                address=sub.address, location=sub.location, caller=sub.caller,
                urgent_flag=sub.urgent, operator_id=sub.operator_id,
            )
            await asyncio.wait_for(publish(self.publisher, [event]), self.publish_timeout)
        except Exception as e:
            if key is not None:
                await self.redis.delete(key)
            log.warning("appeal not accepted, broker did not acknowledge: %r", e)
            raise BrokerUnavailable(str(e)) from e
        # Durable from here on: the router would create the ticket from the event even if we died.
        if sub.phone:
            await self.store.save_contact(event.caller.caller_id, sub.phone, sub.name)
        await self.store.apply_many([Change(ticket_no, partial(record_appeal, appeal=event))])
        if key is not None:
            await self.redis.set(key, ticket_no, ex=IDEMPOTENCY_TTL)
        APPEALS_RECEIVED.labels(channel=sub.channel).inc()
        return ticket_no, True
