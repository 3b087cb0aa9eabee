"""After a restart on the embedded broker (which keeps nothing, `appeals up` calls `redrive`), or
when a running worker finds the broker came back empty (`Runtime.check_broker` calls
`redrive_once`), drive on the tickets the lost topics still owed something: every ticket
still `received` in Redis (acknowledged to the resident, not yet classified and assigned) gets its
`appeal.received` published again, from its own history.

Exactly once: the event keeps its id, so a consumer that had handled it drops it; the classifier's
answer carries an id derived from it, so the router assigns the ticket once. Events written but not
confirmed published are the outbox relay's (the router), which runs on start and every few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

from redis.asyncio import Redis

from shared.bus import EventPublisher, publish
from shared.events import AppealReceived
from shared.settings import Settings
from shared.store import history_key

log = logging.getLogger(__name__)

# Every process that finds the topics missing re-creates them; one of them re-drives. Held for
# longer than a re-drive takes, and not released: another process that saw the same loss a little
# later must not scan again (it would change nothing, the ids being the same, but costs a scan).
REDRIVE_LOCK = "lock:redrive"
REDRIVE_LOCK_SECONDS = 120
REDRIVE_ATTEMPTS = 5


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


async def redrive_once(publisher: EventPublisher, redis: Redis, holder: str) -> int:
    """After this process re-created the lost topics: if it wins the lock, publish the stalled
    appeals again with `publisher` (retrying while the broker settles); returns how many (0 when
    another process holds the lock)."""
    if not await redis.set(REDRIVE_LOCK, holder, nx=True, ex=REDRIVE_LOCK_SECONDS):
        return 0
    for attempt in range(REDRIVE_ATTEMPTS):
        try:
            appeals = await stalled_appeals(redis)
            await publish(publisher, appeals)
        except Exception:
            if attempt == REDRIVE_ATTEMPTS - 1:
                await redis.delete(REDRIVE_LOCK)  # let the next loss try again
                raise
            log.warning("re-drive after the broker loss failed; retrying", exc_info=True)
            await asyncio.sleep(2**attempt)
        else:
            log.warning(
                "broker came back empty: %d acknowledged appeal(s) driven on from the store", len(appeals)
            )
            return len(appeals)
    return 0
