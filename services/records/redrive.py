"""After a restart on the embedded broker (which keeps nothing), drive on the tickets the lost topics
still owed something: every ticket still `received` in Redis (acknowledged to the resident, not yet
classified and assigned) gets its `appeal.received` published again, from its own history.

Exactly once: the event keeps its id, so a consumer that had handled it drops it; the classifier's
answer carries an id derived from it, so the router assigns the ticket once. Events written but not
confirmed published are the outbox relay's (the router), which runs on start as well.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.asyncio import Redis

from shared.bus import EventPublisher, publish
from shared.events import AppealReceived
from shared.settings import Settings
from shared.store import history_key


async def stalled_appeals(redis: Redis, batch: int = 1000) -> list[AppealReceived]:
    """The appeals of tickets still waiting for classification, read from their histories."""
    found: list[AppealReceived] = []
    keys: list[bytes] = []

    async def look(keys: Sequence[bytes]) -> None:
        for key, raw in zip(keys, await redis.mget(keys), strict=True):
            if raw and json.loads(raw).get("status") == "received":
                first = await redis.lindex(history_key(key.decode()[2:]), 0)
                record = json.loads(first) if first else None
                if record and record.pop("topic", None) == AppealReceived.topic:
                    found.append(AppealReceived.model_validate(record))

    async for key in redis.scan_iter(match="t:????????-??????", count=5000):
        keys.append(key)
        if len(keys) >= batch:
            await look(keys)
            keys = []
    if keys:
        await look(keys)
    return found


async def redrive(settings: Settings, redis: Redis) -> int:
    """Publish the stalled appeals again; returns how many."""
    appeals = await stalled_appeals(redis)
    if not appeals:
        return 0
    publisher = EventPublisher(settings, client_id="redrive")
    await publisher.start()
    try:
        await publish(publisher, appeals)
    finally:
        await publisher.stop()
    return len(appeals)
