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


async def test_a_batchs_events_in_the_same_counters_are_summed_and_each_counted_once(redis):
    """The script sums a batch's new events per counter before it increments: events of one day,
    department and grid add up, one read twice in the batch and one counted by an earlier batch
    count once, and every group is listed."""
    from shared.events import DepartmentRef, TicketAssigned
    from tests.router_factory import assign, classified

    city = demo_city()
    card = Scorecard(redis, city, ZoneInfo("Asia/Shanghai"), Weights())
    run = uuid.uuid4().hex[:6]
    dept = DepartmentRef(id=f"test-sum-{run}", name="测试单位")
    at = datetime(2025, 5, 6, 4, tzinfo=UTC)

    def assigned(i: int) -> TicketAssigned:
        outcome = assign(
            city, classified(city, "city.facility.streetlight", no=f"20250506-8{run[:3]}{i:02d}", at=at)
        )
        assert outcome is not None
        (event,) = [e for e in outcome.publish if isinstance(e, TicketAssigned)]
        return event.model_copy(update={"department": dept})

    events = [assigned(i) for i in range(6)]
    groups = card.groups_of(events[0])
    counters = [f"stats:{d}:{g}:20250506" for d, g in groups.items()]
    keys = [f"stats:seen:{e.event_id}" for e in events]
    try:
        assert await card.record(events[:1]) == 1
        assert await card.record([*events, events[2]]) == 5  # the first counted before; the third twice
        assert await redis.hget(f"stats:department:{dept.id}:20250506", "assigned") == b"6"
        assert await redis.sismember("stats:groups:department", dept.id)
    finally:
        await redis.delete(*keys, *counters)
        await redis.srem("stats:groups:department", dept.id)


async def test_a_placement_moves_the_tickets_counts_to_its_new_grid_and_street_once(redis):
    """The desk places an assigned and accepted ticket of grid A (street s01) in grid B (street
    s02): its counts so far leave A and s01 and are in B and s02, on their days, its department's
    stay; the placement read again moves nothing more; one of a ticket with no history moves
    nothing. A past month's sums the move changes are dropped."""
    from shared.events import DepartmentRef, Place, TicketAssigned, TicketUpdated
    from shared.store import event_record, history_key

    city = demo_city()
    card = Scorecard(redis, city, ZoneInfo("Asia/Shanghai"), Weights())
    run = uuid.uuid4().hex[:6]
    no = f"20130101-9{run}"
    old, new = "s01c01g01", "s02c01g01"
    day = date(2013, 1, 1) + timedelta(days=int(run, 16) % 300)  # a day of its own, in a past month
    at = datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
    dept = DepartmentRef(id=f"test-place-{run}", name="测试单位")
    assigned = TicketAssigned(
        ticket_no=no,
        department=dept,
        via="rule",
        explanation="x",
        category=f"test-{run}",
        grid=old,
        respond_by=at + timedelta(days=1),
        resolve_by=at + timedelta(days=5),
        occurred_at=at,
    )
    common = {"ticket_no": no, "status": "accepted", "department": dept, "category": assigned.category}
    accepted = TicketUpdated(
        **common,
        action="accepted",
        actor=dept.id,
        on_time=True,
        grid=old,
        occurred_at=at + timedelta(hours=1),
    )
    placed = TicketUpdated(
        **common,
        action="placed",
        actor="desk",
        grid=new,
        place=Place(grid=new, street="s02", was=old),
        occurred_at=at + timedelta(hours=2),
    )
    elsewhere = placed.model_copy(update={"ticket_no": f"{no}x", "event_id": uuid.uuid4().hex})
    hashes = {
        (d, g): f"stats:{d}:{g}:{day:%Y%m%d}"
        for d, g in (
            ("grid", old),
            ("grid", new),
            ("street", "s01"),
            ("street", "s02"),
            ("department", dept.id),
        )
    }
    month = f"stats:grid:{old}:{day:%Y%m}"
    keys = [history_key(no), month, *hashes.values()]
    keys += [
        f"stats:{k}:{e.event_id}" for k in ("seen", "moved") for e in (assigned, accepted, placed, elsewhere)
    ]
    keys += [f"stats:{d}:{g}:{day:%Y%m%d}" for d, g in card.groups_of(assigned).items() if d == "category"]
    moved = ("assigned", "due_counted", "responded", "responded_on_time", "due", "due_on_time")

    async def counts() -> dict[tuple[str, str], tuple[int, ...]]:
        out = {}
        for group, key in hashes.items():
            h = {k.decode(): int(v) for k, v in (await redis.hgetall(key)).items()}
            out[group] = tuple(h.get(f, 0) for f in moved)
        return out

    try:
        await redis.rpush(history_key(no), *map(event_record, (assigned, accepted, placed)))
        assert await card.record([assigned, accepted]) == 2
        await redis.hset(month, mapping={"assigned": 1})  # the month's sums, made by a query
        before = await counts()
        assert before[("grid", old)] == before[("street", "s01")] == (1, 1, 1, 1, 1, 1)
        assert before[("grid", new)] == before[("street", "s02")] == (0,) * 6

        await card.record([placed])
        after = await counts()
        assert after[("grid", old)] == after[("street", "s01")] == (0,) * 6
        assert after[("grid", new)] == after[("street", "s02")] == (1, 1, 1, 1, 1, 1)
        assert after[("department", dept.id)] == (1, 1, 1, 1, 1, 1)  # the department stays
        assert not await redis.exists(month)  # stale: summed again when next read
        rows = {r["group"]: r for r in await card.query("grid", day, day)}
        assert old not in rows
        assert (rows[new]["assigned"], rows[new]["responded"], rows[new]["response_rate"]) == (1, 1, 1.0)

        # Read again (a consumer restarted before its commit): counted once, moved once.
        assert await card.record([placed]) == 0
        assert await card.move_placed([placed]) == 0
        assert await counts() == after

        # A ticket whose history is gone (it left Redis): nothing to move.
        assert await card.move_placed([elsewhere]) == 0
        assert await counts() == after
        assert not await redis.exists(f"stats:moved:{elsewhere.event_id}")
    finally:
        await redis.delete(*keys)


async def test_the_group_with_no_grid_or_street_is_named_as_the_console_names_it(redis):
    card = Scorecard(redis, demo_city(), ZoneInfo("Asia/Shanghai"), Weights())
    assert card.name_of("grid", "unknown") == card.name_of("street", "unknown") == "未定位"
    assert card.name_of("department", "unknown") == card.name_of("category", "unknown") == "未知"
    assert card.name_of("street", "s01") != "未定位"
