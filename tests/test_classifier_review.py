"""The classifier's review queue on the real Redis: paged oldest first, settled tickets let go."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.classifier import service
from shared import tickets as st
from tests.cities import demo_city
from tests.router_factory import assigned_ticket, classified


async def test_the_review_queue_is_paged_oldest_first_and_lets_settled_tickets_go(redis):
    """A page of the queue, oldest first, with how many wait; every appeal without a page. An
    appeal whose ticket was dispatched meanwhile leaves the queue; one whose ticket is not in
    Redis (yet) stays."""
    city = demo_city()
    # Older than anything else the session's tests queue, so that these come first.
    t0 = datetime(2001, 1, 1, tzinfo=UTC)
    run = uuid.uuid4().int % 10_000
    nos = [f"20010101-{run:04d}{i:02d}" for i in range(4)]
    # Queued newest first: the order is the appeals' time, not the queue's.
    appeals = [
        classified(city, "env.noise", confidence=0.3, no=no, at=t0 - timedelta(hours=i))
        for i, no in enumerate(nos)
    ]
    waiting = assigned_ticket(city, confidence=0.3)
    assert waiting.status == st.REVIEW
    for no in nos[:2]:
        await redis.set(f"t:{no}", waiting.model_copy(update={"ticket_no": no}).model_dump_json())
    dispatched = waiting.model_copy(update={"ticket_no": nos[2], "status": st.ASSIGNED})
    await redis.set(f"t:{nos[2]}", dispatched.model_dump_json())  # nos[3]: no ticket in Redis
    await service.queue_for_review(redis, appeals)
    try:
        count, first = await service.review_page(redis, 1, 2)
        _, second = await service.review_page(redis, 2, 2)
        _, every = await service.review_page(redis, None, 2)
        assert [r.ticket_no for r in first] == [nos[3], nos[1]]
        assert [r.ticket_no for r in second][:1] == [nos[0]]
        assert count == len(every) >= 3
        assert [r.ticket_no for r in every][:3] == [nos[3], nos[1], nos[0]]
        assert await service.in_review(redis, nos[2]) is None  # dispatched: it left the queue
    finally:
        await service.done_reviewing(redis, nos)
        await redis.delete(*(f"t:{no}" for no in nos))
