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


async def test_a_whole_month_is_read_from_its_months_hash_counted_beside_the_days(redis, monkeypatch):
    """Each count goes into its day's hash and its month's; a period reads a whole month, from the
    first month counted whole that way, from the month's hash alone, and the rest day by day."""
    from shared.events import DepartmentRef, TicketAssigned
    from tests.router_factory import assign, classified

    city = demo_city()
    card = Scorecard(redis, city, ZoneInfo("Asia/Shanghai"), Weights())
    run = uuid.uuid4().hex[:6]
    since = f"stats:test-months-since-{run}"  # the scorecard's own, not the session's
    monkeypatch.setattr(scorecard, "MONTHS_SINCE", since)
    await redis.set(since, "203103")
    dept = DepartmentRef(id=f"test-month-{run}", name="测试单位")
    events = []
    for i, when in enumerate(
        datetime(2031, m, d, 4, tzinfo=UTC) for m, d in ((3, 1), (3, 15), (3, 31), (4, 1))
    ):
        outcome = assign(
            city, classified(city, "city.facility.streetlight", no=f"20310301-9{run[:3]}{i:02d}", at=when)
        )
        assert outcome is not None
        (assigned,) = [e for e in outcome.publish if isinstance(e, TicketAssigned)]
        events.append(assigned.model_copy(update={"department": dept}))
    groups = card.groups_of(events[0])
    keys = [since, *(f"stats:seen:{e.event_id}" for e in events)]
    keys += [f"stats:{d}:{g}:{s}" for d, g in groups.items() for s in ("203103", "203104", "20310401")]
    keys += [f"stats:{d}:{g}:203103{day:02d}" for d, g in groups.items() for day in (1, 15, 31)]
    try:
        assert await card.record(events) == 4
        assert await card.record(events) == 0  # read twice, counted once
        assert await redis.hget(f"stats:department:{dept.id}:203103", "assigned") == b"3"

        async def assigned(start: date, end: date) -> int:
            rows = [r for r in await card.query("department", start, end) if r["group"] == dept.id]
            return rows[0]["assigned"] if rows else 0

        assert await assigned(date(2031, 3, 1), date(2031, 4, 1)) == 4
        assert await assigned(date(2031, 3, 2), date(2031, 4, 1)) == 3  # March in part: by day
        # The month's hash is what a whole March reads: a day's hash gone changes nothing.
        await redis.delete(f"stats:department:{dept.id}:20310315")
        assert await assigned(date(2031, 3, 1), date(2031, 3, 31)) == 3
        await redis.set(since, "203104")  # March not yet counted whole by month: read by day
        assert await assigned(date(2031, 3, 1), date(2031, 3, 31)) == 2
    finally:
        await redis.delete(*keys)
        await redis.srem("stats:groups:department", dept.id)
