"""The caller's contact record exists before the appeal's event can be read: the notifier looks the
phone up the moment it reads `appeal.received`, to send the acknowledgement SMS, and may do so before
the broker's ack has even reached the intake. Found by the crash test, where acknowledgements of
appeals read that fast were silently never sent."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence

import pytest

from services.intake.domain import validate
from services.intake.service import BrokerUnavailable, IntakeService
from shared.bus import EventPublisher
from shared.privacy import caller_id
from shared.store import TicketStore

pytestmark = pytest.mark.integration


class Witness(EventPublisher):
    """Takes every event at once, noting the phone a reader of the event would find for its caller."""

    def __init__(self, settings, redis, *, fail: bool = False) -> None:
        super().__init__(settings, client_id="test-witness")
        self.redis = redis
        self.fail = fail
        self.found: list[bytes | None] = []

    async def send_many(self, records: Sequence[tuple[str, bytes, bytes]]) -> list[asyncio.Future]:
        for _, value, _ in records:
            cid = json.loads(value)["caller"]["caller_id"]
            self.found.append(await self.redis.hget(f"contact:{cid}", "phone"))
        if self.fail:
            raise ConnectionError("broker gone")
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done]


def phone() -> str:
    return f"136{random.randint(10**7, 10**8 - 1)}"


def appeal(me: str):
    return validate(channel="hotline", text="小区门口的路灯坏了一个星期了，晚上很黑", phone=me, name="王五")


async def test_the_contact_is_written_before_the_event_is_published(settings, redis):
    witness = Witness(settings, redis)
    intake = IntakeService(witness, TicketStore(redis), timezone=settings.timezone)
    me = phone()
    await intake.submit(appeal(me))
    assert witness.found == [me.encode()]
    assert await redis.hget(f"contact:{caller_id(me)}", "name") == "王五".encode()


async def test_a_refused_appeal_removes_only_a_contact_it_created(settings, redis):
    intake = IntakeService(
        Witness(settings, redis, fail=True), TicketStore(redis), timezone=settings.timezone
    )
    new, known = phone(), phone()
    await redis.hset(f"contact:{caller_id(known)}", mapping={"phone": known})
    for me in (new, known):
        with pytest.raises(BrokerUnavailable):
            await intake.submit(appeal(me))
    assert await redis.exists(f"contact:{caller_id(new)}") == 0
    assert await redis.hget(f"contact:{caller_id(known)}", "phone") == known.encode()
