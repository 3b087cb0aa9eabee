"""The scorecard's query on the real Redis: each group's counters summed over the period's days."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
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
