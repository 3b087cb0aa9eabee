"""Answering a resident's progress query (WeChat, SMS): the rule and the words are pure
(`services.intake.progress`); this reads the caller's tickets.

A caller's recent tickets are the ones in their open-ticket index (`keys.caller_index`, which the
operator's duplicate preview reads too): open, resolved and in their survey; a ticket leaves it
when it closes, and is then among their recently closed ones (`keys.caller_closed`) for
`keys.RECENTLY_CLOSED_DAYS`, so that 查询 sent minutes after the survey closed it tells its result rather
than "nothing found". A closed ticket is still answered by its number while Redis keeps it
(`REDIS_KEEP_CLOSED_DAYS`). A ticket is the caller's when its `caller_id` is theirs: a number
that is someone else's is answered as one that does not exist, so numbers cannot be guessed to
read others' tickets. A ticket whose resident's personal data was erased is nobody's any more
(and, found in the index, is taken out of it, as the preview does).

A ticket merged into another (并案) is answered with the ticket it was merged into: its number, its
status and its department, asked by either number (the merge's SMS tells the resident to ask for the
main ticket's, which is another resident's: only its number, status and department are told, and
only to a resident whose ticket was merged into it). A main ticket merged into another since is
answered the same way, by the ticket its duplicates follow now.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from services.intake import keys
from services.intake.limits import RateLimiter
from services.intake.progress import LISTED, Query, TicketProgress, progress_of, reply_text
from shared.redis_client import text
from shared.store import TicketStore
from shared.tickets import Ticket


@dataclass(frozen=True)
class Answer:
    text: str  # what the resident is told (a WeChat reply, the body of an SMS)
    ticket_nos: tuple[str, ...]  # the tickets it names (an SMS is filed under them, for erasure)


class ProgressQueries:
    def __init__(self, store: TicketStore, limiter: RateLimiter | None, *, timezone: str) -> None:
        self.store = store
        self.limiter = limiter
        self.tz = ZoneInfo(timezone)

    async def answer(self, caller_id: str, query: Query, link: Callable[[str], str] | None = None) -> Answer:
        """The answer to `caller_id`'s query, with `link` (a ticket's lookup address) after each
        ticket it names when given. Raises RateLimited when they asked too often."""
        if self.limiter is not None:
            await self.limiter.check_queries(caller_id)
        if query.ticket_no is not None:
            ticket = await self.store.get(query.ticket_no)
            mine = [ticket] if ticket is not None and _belongs(ticket, caller_id) else []
            if not mine and ticket is not None and ticket.merged_into is not None:
                # 并案: a main ticket of theirs that was merged into another since: the one their
                # ticket follows now (and lists it), as their latest SMS told them.
                ticket = await self.store.get(ticket.merged_into)
            if not mine and ticket is not None and ticket.merged:
                # 并案: the main ticket of one of theirs, the number their SMS told them to follow.
                merged = await self.store.get_many(list(ticket.merged))
                mine = [t for t in merged if t is not None and _belongs(t, caller_id)][:1]
            more = 0
        else:
            mine, more = await self._recent(caller_id)
        found = [await self._progress(t) for t in mine]
        return Answer(reply_text(query, found, more, link), tuple(t.ticket_no for t in mine))

    async def _progress(self, ticket: Ticket) -> TicketProgress:
        """One of the caller's tickets as they are told it; a merged one by the ticket it follows
        (its status and department only: that ticket is another resident's)."""
        if ticket.merged_into is not None:
            return progress_of(ticket, (), self.tz, await self.store.get(ticket.merged_into))
        return progress_of(ticket, await self.store.history(ticket.ticket_no), self.tz)

    async def _recent(self, caller_id: str) -> tuple[list[Ticket], int]:
        """The caller's LISTED most recent tickets in their index, and how many more there are."""
        index, closed = keys.caller_index(caller_id), keys.caller_closed(caller_id)
        since = time.time() - keys.RECENTLY_CLOSED_DAYS * 86400
        async with self.store.redis.pipeline(transaction=False) as p:
            p.smembers(index)
            p.zrangebyscore(closed, since, "+inf")
            open_nos, closed_nos = await p.execute()
        nos = sorted({text(m) for m in (*open_nos, *closed_nos)})
        tickets = [t for t in await self.store.get_many(nos) if t is not None]
        erased = [t.ticket_no for t in tickets if t.personal_data_removed_at is not None]
        if erased:
            async with self.store.redis.pipeline(transaction=False) as p:
                p.srem(index, *erased)
                p.zrem(closed, *erased)
                await p.execute()
        mine = sorted(
            (t for t in tickets if _belongs(t, caller_id)), key=lambda t: t.received_at, reverse=True
        )
        return mine[:LISTED], max(0, len(mine) - LISTED)


def _belongs(ticket: Ticket, caller_id: str) -> bool:
    return (
        bool(caller_id) and ticket.caller.caller_id == caller_id and ticket.personal_data_removed_at is None
    )
