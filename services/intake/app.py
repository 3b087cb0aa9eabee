"""The intake worker: keeps the duplicate index that operators consult before submitting
(`keys.caller_index`: a caller's open tickets; `keys.grid_index`: a grid's tickets of the last
7 days, scored by time), and drops a ticket from the caller's keys when its resident's personal
data is erased.

The HTTP side of intake (views.py) numbers and publishes; this worker follows the events."""

from __future__ import annotations

import time
from collections.abc import Sequence

from faststream import FastStream
from redis.asyncio import Redis

from services.intake import keys
from services.intake.duplicates import DUPLICATE_WINDOW_SECONDS
from services.intake.service import CALLER_INDEX_TTL
from shared.events import (
    AppealReceived,
    Caller,
    PersonalDataRemoved,
    TicketAction,
    TicketAssigned,
    TicketUpdated,
    View,
)
from shared.runtime import Runtime
from shared.settings import Settings
from shared.store import TicketStore

NAME = "intake"

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
# A ticket already in the index keeps its time (NX): see `DuplicateIndex._join_grids`.
_INDEX_GRIDS = """
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'NX', ARGV[2 * i + 1], ARGV[2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
end
return #KEYS
"""

# A ticket whose resident had their personal data erased: its caller no longer leads to it (the
# operator's duplicate preview would show an erased resident their erased tickets). KEYS: per ticket
# its caller's index, the caller's last WeChat ticket, then their recently closed tickets; ARGV: per
# ticket its number.
_FORGET = """
for i = 1, #ARGV do
  redis.call('SREM', KEYS[3 * i - 2], ARGV[i])
  if redis.call('GET', KEYS[3 * i - 1]) == ARGV[i] then redis.call('DEL', KEYS[3 * i - 1]) end
  redis.call('ZREM', KEYS[3 * i], ARGV[i])
end
return #ARGV
"""


# What the indexes read of each event (`View`): the caller of an appeal, the grid an assignment puts
# its ticket in, and whether an update closed a caller's ticket.


class CallerOf(View):
    of = AppealReceived
    caller: Caller = Caller()


class PlacedBy(View):
    """An assignment, for the grid its ticket is in from then on: the classifier's, or the one the
    dispatch desk placed it in. Every classified appeal is assigned (to the desk, when no
    department is sure), so the grid index is kept from the assignments alone: the
    classification, which carries the whole appeal again, is not read here at all (a third of
    what this worker read in a flood)."""

    of = TicketAssigned
    version: int = 5
    grid: str | None


class UpdateOf(View):
    """A ticket update, for whether it closed a caller's ticket, or placed the ticket in a grid
    (`placed`: `grid` is where the desk placed it)."""

    of = TicketUpdated
    version: int = 5
    action: TicketAction
    caller_id: str | None = None
    grid: str | None = None


class DuplicateIndex:
    """The worker's handlers, one per event it follows. Every one is idempotent (set and sorted-set
    writes), so a redelivered batch changes nothing."""

    def __init__(self, redis: Redis, store: TicketStore) -> None:
        self.redis = redis
        self.store = store
        self._index_callers = redis.register_script(_INDEX_CALLERS)
        self._index_grids = redis.register_script(_INDEX_GRIDS)
        self._forget = redis.register_script(_FORGET)

    async def received(self, appeals: list[CallerOf]) -> None:
        """A caller's new tickets join their open-ticket index."""
        callers = [(a.caller.caller_id, a.ticket_no) for a in appeals if a.caller.caller_id]
        if callers:
            await self._index_callers(
                keys=[keys.caller_index(cid) for cid, _ in callers],
                args=[CALLER_INDEX_TTL, *(no for _, no in callers)],
            )

    async def placed(self, assigned: list[PlacedBy]) -> None:
        """An assigned ticket joins the index of its grid (the classifier's, or where the dispatch
        desk placed it as it dispatched it), from the assignment's time (`_join_grids`)."""
        await self._join_grids([a for a in assigned if a.grid])

    async def _join_grids(self, placed: Sequence[PlacedBy | UpdateOf]) -> None:
        """Tickets join the index of the grid they were placed in, from the time they came there
        (the older than 7 days leave it). One assigned again in the same grid (returned, or sent
        out by a joint meeting's decision) keeps its time: the preview compares an appeal with its
        grid's newest tickets, which a flood's reassignments would otherwise crowd out. The index
        of a grid one left keeps it until it ages out, and the duplicate preview passes it over
        there (`open_in_grids` reads the ticket's grid)."""
        if not placed:
            return
        args: list[str | float] = [time.time() - DUPLICATE_WINDOW_SECONDS]
        for a in placed:
            args += [a.ticket_no, a.occurred_at.timestamp()]
        await self._index_grids(keys=[keys.grid_index(a.grid or "") for a in placed], args=args)

    async def updated(self, updates: list[UpdateOf]) -> None:
        """A ticket the desk placed in a grid after its assignment (事发网格, `placed`) joins that
        grid's index, as one placed as it was dispatched does (`placed`).

        A closed ticket leaves its caller's open-ticket index (the event names the caller: no
        ticket to read), a duplicate merged into another (并案) too: its resident follows the main
        ticket from then on, and asks about it by number (see queries.py). A closed one stays among
        the caller's recent tickets for `keys.RECENTLY_CLOSED_DAYS` (`keys.caller_closed`)."""
        await self._join_grids([u for u in updates if u.action == "placed" and u.grid])
        closed = [(u, cid) for u in updates if u.action in ("closed", "merged") and (cid := u.caller_id)]
        if not closed:
            return
        keep = keys.RECENTLY_CLOSED_DAYS * 86400
        async with self.redis.pipeline(transaction=False) as p:
            for u, cid in closed:
                p.srem(keys.caller_index(cid), u.ticket_no)
                if u.action == "closed":
                    at = u.occurred_at.timestamp()
                    p.zadd(keys.caller_closed(cid), {u.ticket_no: at})
                    p.zremrangebyscore(keys.caller_closed(cid), "-inf", at - keep)
                    p.expire(keys.caller_closed(cid), keep)
            await p.execute()

    async def erased(self, removed: list[PersonalDataRemoved]) -> None:
        """A ticket erased on its resident's request leaves the caller's open-ticket index, and is
        no longer the WeChat ticket a location message would complete. (The grid index keeps it:
        a ticket number there says nothing of who called.)"""
        if not removed:
            return
        await self._forget(
            keys=[
                k
                for r in removed
                for k in (
                    keys.caller_index(r.caller_id),
                    keys.wechat_last(r.caller_id),
                    keys.caller_closed(r.caller_id),
                )
            ],
            args=[r.ticket_no for r in removed],
        )
        # What a WeChat user sent for an appeal that has not come yet goes with the rest: the
        # photos (no ticket took them, and the sweep of unattached uploads deletes their files) and
        # the location, where they were.
        callers = {r.caller_id for r in removed}
        await self.redis.delete(
            *(k for cid in callers for k in (keys.wechat_photos(cid), keys.wechat_location(cid)))
        )


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_intake)
    index = DuplicateIndex(rt.redis, rt.store)
    rt.subscribe_each(
        {
            CallerOf: index.received,
            PlacedBy: index.placed,
            UpdateOf: index.updated,
            PersonalDataRemoved: index.erased,
        }
    )
    return app
