"""`appeals bench notifier`: how many acknowledgements and scorecard events the notifier handles per second
on this machine, against the configured Redis (the outbox gateway; no broker needed), or a Redis of
its own when REDIS_URL is not set. It works in its own keys and removes them afterwards."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from services.notifier.app import Acknowledged, Handlers
from services.notifier.gateway import OutboxGateway
from services.notifier.policy import Policy
from services.notifier.scorecard import Scorecard
from services.notifier.scoring import Weights
from services.notifier.service import Notifier
from services.notifier.texts import load_texts
from shared.city import load_city
from shared.embedded import EmbeddedServers
from shared.events import AppealReceived, Caller, DepartmentRef, TicketAssigned
from shared.settings import Settings
from shared.store import TicketStore

BATCH = 500  # what one consumer batch holds (shared.bus.BATCH_SUBSCRIBER)
BENCH_DAY = datetime(2000, 1, 3, 10)  # the scorecard events are counted on a day nobody else uses


def main(settings: Settings, n: int) -> dict[str, float]:
    if "redis_url" in settings.model_fields_set:  # REDIS_URL set, in the environment or .env
        return asyncio.run(run(settings, n))
    servers = EmbeddedServers().start()  # Redis (and a broker, unused) on free ports, kept nowhere
    try:
        return asyncio.run(run(settings.model_copy(update={"redis_url": servers.redis_url}), n))
    finally:
        servers.stop()


async def run(settings: Settings, n: int) -> dict[str, float]:
    redis = Redis.from_url(settings.redis_url)
    run_id = uuid.uuid4().hex[:8]
    tz = ZoneInfo(settings.timezone)
    city = load_city(settings.city_config_dir)

    async def no_publish(events) -> None:
        return None

    notifier = Notifier(
        TicketStore(redis),
        OutboxGateway(redis, key=f"bench:{run_id}:outbox"),
        no_publish,
        texts=load_texts(settings.notifications_file),
        policy=Policy(None, 10, tz),
        jobs_key=f"bench:{run_id}:due",
    )
    handlers = Handlers(notifier, Scorecard(redis, city, tz, Weights()))
    phones = [f"199{i:08d}" for i in range(n)]
    appeals = [
        AppealReceived(
            ticket_no=f"bench-{run_id}-{i}",
            channel="hotline",
            text="路灯坏了",
            caller=Caller(caller_id=f"bench-{run_id}-{i}", masked_phone="199****0000"),
        )
        for i in range(n)
    ]
    day = BENCH_DAY.replace(tzinfo=tz)
    dept = DepartmentRef(id=f"bench-{run_id}", name="bench")
    assigned = [
        TicketAssigned(
            ticket_no=a.ticket_no,
            department=dept,
            via="rule",
            explanation="bench",
            category=f"bench-{run_id}",
            grid=None,
            respond_by=day,
            resolve_by=day,
            occurred_at=day,
        )
        for a in appeals
    ]
    try:
        async with redis.pipeline(transaction=False) as p:
            for a, phone in zip(appeals, phones, strict=False):
                p.hset(f"contact:{a.caller.caller_id}", mapping={"phone": phone})
            await p.execute()
        read = [Acknowledged.from_json(a.json_bytes) for a in appeals]  # as the worker reads them
        started = time.perf_counter()
        for i in range(0, n, BATCH):
            await handlers.appeals(read[i : i + BATCH])
        acks = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(0, n, BATCH):
            await handlers.assignments(assigned[i : i + BATCH])
        scorecard_events = n / (time.perf_counter() - started)
        sent = await redis.llen(f"bench:{run_id}:outbox")
    finally:
        today = f"{notifier.policy.local_day(datetime.now(tz)):%Y%m%d}"
        await _clean(redis, run_id, appeals, assigned, phones, today)
        await redis.aclose()
    return {
        "messages": n,
        "acks_sent": sent,
        "acks_per_second": round(acks),
        "scorecard_events_per_second": round(scorecard_events),
    }


async def _clean(
    redis: Redis,
    run_id: str,
    appeals: list[AppealReceived],
    assigned: list[TicketAssigned],
    phones: list[str],
    today: str,
) -> None:
    outbox = f"bench:{run_id}:outbox"
    sent = [json.loads(r)["message_id"] for r in await redis.lrange(outbox, 0, -1)]
    keys = [outbox, f"bench:{run_id}:due", *(f"sms:msg:{m}" for m in sent)]
    keys += [f"{outbox}:id:{m}" for m in sent]  # the outbox's once-per-id keys
    keys += [f"contact:{a.caller.caller_id}" for a in appeals]
    keys += [f"sms:done:{a.event_id}:ack" for a in appeals]
    keys += [f"stats:seen:{a.event_id}" for a in assigned]
    keys += [key async for key in redis.scan_iter(match=f"stats:*:{BENCH_DAY:%Y%m%d}")]
    keys += [key async for key in redis.scan_iter(match=f"stats:*:{BENCH_DAY:%Y%m}")]  # its month's
    await redis.hdel(f"sms:count:{today}", *phones)
    for dim in ("department", "category"):
        await redis.srem(f"stats:groups:{dim}", f"bench-{run_id}")
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i : i + 1000])
