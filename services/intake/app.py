"""The intake worker: keeps the duplicate index that operators consult before submitting.

  dup:caller:{caller_id}  open ticket numbers of a caller (added on receipt, removed on close)
  dup:grid:{grid}         ticket numbers per grid, scored by time (last 7 days kept)

The HTTP side of intake (views.py) numbers and publishes; this worker follows the events."""

from __future__ import annotations

import time

from faststream import FastStream

from shared import topics
from shared.bus import batch_subscriber, parse_or_dead_letter
from shared.events import AppealClassified, AppealReceived, TicketUpdated
from shared.metrics import BATCH_SECONDS
from shared.runtime import Runtime
from shared.settings import Settings

NAME = "intake"
DUPLICATE_WINDOW_SECONDS = 7 * 86400
CALLER_INDEX_TTL = 90 * 86400


def caller_key(caller_id: str) -> str:
    return f"dup:caller:{caller_id}"


def grid_key(grid: str) -> str:
    return f"dup:grid:{grid}"


# One command per batch, not two per appeal (redis-py packs and parses every command in Python).
# KEYS: per appeal its caller's index; ARGV: the ttl, then per appeal its ticket number.
_INDEX_CALLERS = """
for i = 1, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return #KEYS
"""
# KEYS: per appeal its grid's index; ARGV: the cutoff, then per appeal its ticket number and time.
_INDEX_GRIDS = """
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[2 * i + 1], ARGV[2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
end
return #KEYS
"""


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_intake)
    index_callers_script = rt.redis.register_script(_INDEX_CALLERS)
    index_grids_script = rt.redis.register_script(_INDEX_GRIDS)

    @batch_subscriber(rt.broker, topics.APPEAL_RECEIVED, NAME)
    async def index_callers(bodies: list[bytes]) -> None:
        started = time.perf_counter()
        appeals = await parse_or_dead_letter(
            rt.publisher, AppealReceived, topics.APPEAL_RECEIVED, bodies, NAME
        )
        # SADD is idempotent: a redelivery changes nothing.
        callers = [a for a in appeals if a.caller.caller_id]
        if callers:
            await index_callers_script(
                keys=[caller_key(a.caller.caller_id) for a in callers],
                args=[CALLER_INDEX_TTL, *(a.ticket_no for a in callers)],
            )
        BATCH_SECONDS.labels(consumer=NAME).observe(time.perf_counter() - started)

    @batch_subscriber(rt.broker, topics.APPEAL_CLASSIFIED, NAME)
    async def index_grids(bodies: list[bytes]) -> None:
        classified = await parse_or_dead_letter(
            rt.publisher, AppealClassified, topics.APPEAL_CLASSIFIED, bodies, NAME
        )
        located = [c for c in classified if c.grid.grid]
        if located:
            args: list[str | float] = [time.time() - DUPLICATE_WINDOW_SECONDS]
            for c in located:
                args += [c.ticket_no, c.appeal.received_at.timestamp()]
            await index_grids_script(keys=[grid_key(c.grid.grid) for c in located], args=args)

    @batch_subscriber(rt.broker, topics.TICKET_UPDATED, NAME)
    async def forget_closed(bodies: list[bytes]) -> None:
        updates = await parse_or_dead_letter(rt.publisher, TicketUpdated, topics.TICKET_UPDATED, bodies, NAME)
        # The event names the caller: no ticket to read.
        closed = [(u.ticket_no, cid) for u in updates if u.action == "closed" and (cid := u.caller_id)]
        if not closed:
            return
        async with rt.redis.pipeline(transaction=False) as p:
            for ticket_no, cid in closed:
                p.srem(caller_key(cid), ticket_no)
            await p.execute()

    return app
