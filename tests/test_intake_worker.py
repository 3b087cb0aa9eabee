"""The intake worker's handlers on a real Redis: a caller's tickets join their open-ticket index,
and a ticket erased on its resident's request leaves the caller's keys."""

from __future__ import annotations

import uuid

from services.intake import keys
from services.intake.app import DuplicateIndex
from shared.events import AppealReceived, Caller, PersonalDataRemoved
from shared.store import TicketStore


def appeal(no: str, cid: str) -> AppealReceived:
    return AppealReceived(ticket_no=no, channel="wechat", text="路灯坏了", caller=Caller(caller_id=cid))


async def test_an_erased_ticket_leaves_its_callers_index_and_last_wechat_ticket(redis):
    index = DuplicateIndex(redis, TicketStore(redis))
    erased, kept, other = (uuid.uuid4().hex[:20] for _ in range(3))  # callers of this test only
    await index.received(
        [
            appeal("20261123-888001", erased),
            appeal("20261123-888002", erased),
            appeal("20261123-888003", other),
        ]
    )
    await redis.set(keys.wechat_last(erased), "20261123-888001")
    await redis.set(keys.wechat_last(kept), "20261123-888009")  # a caller with another last ticket
    await redis.set(keys.wechat_last(other), "20261123-888003")

    notice = PersonalDataRemoved(ticket_no="20261123-888001", caller_id=erased)
    await index.erased([notice, PersonalDataRemoved(ticket_no="20261123-888008", caller_id=kept)])
    await index.erased([notice])  # redelivered: nothing more to do, nothing fails

    assert await redis.smembers(keys.caller_index(erased)) == {b"20261123-888002"}
    assert await redis.exists(keys.wechat_last(erased)) == 0
    assert await redis.get(keys.wechat_last(kept)) == b"20261123-888009"  # not the erased ticket
    assert await redis.smembers(keys.caller_index(other)) == {b"20261123-888003"}
    assert await redis.get(keys.wechat_last(other)) == b"20261123-888003"
    await redis.delete(*(k(c) for k in (keys.caller_index, keys.wechat_last) for c in (erased, kept, other)))
