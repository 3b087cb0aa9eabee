"""Abuse protection: fixed-window counters in Redis, per client IP and per caller.

A window is a Redis key per (scope, who, window number) that expires with the window, so there is
nothing to clean up and every API process shares the same counts."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from redis.asyncio import Redis

from services.intake import keys
from services.intake.errors import RateLimited

__all__ = ["RateLimited", "RateLimiter", "caller_limited"]


class RateLimiter:
    def __init__(self, redis: Redis, *, per_caller_per_hour: int, per_ip_per_minute: int) -> None:
        self.redis = redis
        self.per_caller = per_caller_per_hour
        self.per_ip = per_ip_per_minute

    async def _over(self, scope: str, counts: Counter[str], limit: int, window: int) -> dict[str, int]:
        """Count the hits; return who is now over `limit`, with the seconds until their window ends."""
        if not counts or limit <= 0:
            return {}
        now = time.time()
        slot = int(now // window)
        async with self.redis.pipeline(transaction=False) as p:
            for who, n in counts.items():
                key = keys.rate_window(scope, who, slot)
                p.incrby(key, n)
                p.expire(key, window + 1)
            totals = (await p.execute())[::2]
        retry = max(1, int((slot + 1) * window - now) + 1)
        return {who: retry for who, total in zip(counts, totals, strict=False) if total > limit}

    async def check_ip(self, ip: str | None, cost: int = 1) -> None:
        if not ip:
            return
        over = await self._over("ip", Counter({ip: cost}), self.per_ip, 60)
        if over:
            raise RateLimited(over[ip], f"提交过于频繁，请{over[ip]}秒后再试")

    async def callers_over(self, caller_ids: Iterable[str]) -> dict[str, int]:
        """Count one submission per id given (repeat an id for several); who is over the hourly limit."""
        return await self._over("caller", Counter(caller_ids), self.per_caller, 3600)

    async def check_queries(self, caller_id: str) -> None:
        """A resident's progress queries (WeChat, SMS): the per-caller hourly limit, counted apart
        from their appeals (asking how one is going must not use up the right to raise the next),
        so that a query loop sends at most that many answers an hour. Raises RateLimited."""
        over = await self._over("query", Counter({caller_id: 1}), self.per_caller, 3600)
        if over:
            minutes = max(1, over[caller_id] // 60)
            raise RateLimited(over[caller_id], f"查询过于频繁，请约{minutes}分钟后再试；也可拨打12345查询")


def caller_limited(retry_after: int) -> RateLimited:
    minutes = max(1, retry_after // 60)
    return RateLimited(
        retry_after, f"同一来电人一小时内提交的诉求过多，请约{minutes}分钟后再试；紧急情况请直接拨打12345"
    )
