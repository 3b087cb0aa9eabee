"""The scorecard's query on the real Redis: each group's counters summed over the period's days."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from services.notifier import scorecard
from services.notifier.scorecard import Scorecard
from services.notifier.scoring import Weights
from tests.cities import demo_city


async def test_each_groups_counters_are_summed_over_the_days_in_redis(redis, monkeypatch):
    """Summed where they are kept, a few groups' days to a call of the script: every group of the
    dimension, whichever call holds it, gets its own days' sums, and no day outside the period."""
    card = Scorecard(redis, demo_city(), ZoneInfo("Asia/Shanghai"), Weights())
    dim = f"test{uuid.uuid4().hex[:6]}"  # a dimension of its own: no other test's groups
    first = date(2026, 3, 1)
    groups = [f"g{i}" for i in range(5)]
    keys = [f"stats:groups:{dim}"]
    for n, g in enumerate(groups, 1):
        await redis.sadd(f"stats:groups:{dim}", g)
        for d in range(-1, 4):  # a day before the period and one after it, which are not counted
            key = f"stats:{dim}:{g}:{first + timedelta(days=d):%Y%m%d}"
            await redis.hset(key, mapping={"assigned": n, "responded": 1})
            keys.append(key)
    await redis.sadd(f"stats:groups:{dim}", "quiet")  # seen once, nothing in the period: not listed
    # Two groups' three days to a call: three calls, the last with one group.
    monkeypatch.setattr(scorecard, "SUM_KEYS_PER_CALL", 6)
    try:
        rows = await card.query(dim, first, first + timedelta(days=2))
        assert {r["group"]: (r["assigned"], r["responded"]) for r in rows} == {
            g: (3 * n, 3) for n, g in enumerate(groups, 1)
        }
    finally:
        await redis.delete(*keys)


async def test_a_whole_month_gone_by_is_summed_once_and_kept_until_a_late_count_comes_into_it(redis):
    """A period reads a whole past month from its month's sums, made from its days by the first
    period that reads it; a count that comes late into that month drops them, and the next read
    sums the days again."""
    from shared.events import DepartmentRef, TicketAssigned
    from tests.router_factory import assign, classified

    city = demo_city()
    card = Scorecard(redis, city, ZoneInfo("Asia/Shanghai"), Weights())
    run = uuid.uuid4().hex[:6]
    dept = DepartmentRef(id=f"test-month-{run}", name="测试单位")

    def assigned_on(month: int, day: int, i: int) -> TicketAssigned:
        at = datetime(2025, month, day, 4, tzinfo=UTC)
        outcome = assign(
            city, classified(city, "city.facility.streetlight", no=f"20250301-9{run[:3]}{i:02d}", at=at)
        )
        assert outcome is not None
        (event,) = [e for e in outcome.publish if isinstance(e, TicketAssigned)]
        return event.model_copy(update={"department": dept})

    events = [assigned_on(m, d, i) for i, (m, d) in enumerate(((3, 1), (3, 15), (3, 31), (4, 1)))]
    late = assigned_on(3, 20, 9)
    groups = card.groups_of(events[0])
    month = f"stats:department:{dept.id}:202503"
    keys = [f"stats:seen:{e.event_id}" for e in (*events, late)]
    keys += [f"stats:{d}:{g}:{s}" for d, g in groups.items() for s in ("202503", "20250401")]
    keys += [f"stats:{d}:{g}:202503{day:02d}" for d, g in groups.items() for day in (1, 15, 20, 31)]

    async def assigned(start: date, end: date) -> int:
        rows = [r for r in await card.query("department", start, end) if r["group"] == dept.id]
        return rows[0]["assigned"] if rows else 0

    try:
        assert await card.record(events) == 4
        assert await card.record(events) == 0  # read twice, counted once
        assert not await redis.exists(month)  # counting sums no month
        assert await assigned(date(2025, 3, 2), date(2025, 4, 1)) == 3  # March in part: by day
        assert not await redis.exists(month)
        assert await assigned(date(2025, 3, 1), date(2025, 4, 1)) == 4
        assert await redis.hget(month, "assigned") == b"3"  # March summed, and kept
        await redis.delete(f"stats:department:{dept.id}:20250315")
        assert await assigned(date(2025, 3, 1), date(2025, 3, 31)) == 3  # from the month's sums
        assert await card.record([late]) == 1  # late into March: its sums are stale
        assert not await redis.exists(month)
        assert await assigned(date(2025, 3, 1), date(2025, 3, 31)) == 3  # 1, 20 and 31 March, by day
        assert await redis.hget(month, "assigned") == b"3"
    finally:
        await redis.delete(*keys)
        await redis.srem("stats:groups:department", dept.id)
