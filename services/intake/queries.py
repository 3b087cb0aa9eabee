"""Answering a resident's progress query (WeChat, SMS): the rule and the words are pure
(`services.intake.progress`); this reads the caller's tickets.

A caller's recent tickets are the ones in their open-ticket index (`keys.caller_index`, which the
operator's duplicate preview reads too): open, resolved and in their survey; a ticket leaves it
when it closes. A closed ticket is still answered by its number while Redis keeps it
(`REDIS_KEEP_CLOSED_DAYS`). A ticket is the caller's when its `caller_id` is theirs: a number
that is someone else's is answered as one that does not exist, so numbers cannot be guessed to
read others' tickets. A ticket whose resident's personal data was erased is nobody's any more
(and, found in the index, is taken out of it, as the preview does).
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from services.intake import keys
from services.intake.limits import RateLimiter
from services.intake.progress import LISTED, Query, progress_of, reply_text
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

    async def answer(self, caller_id: str, query: Query) -> Answer:
        """The answer to `caller_id`'s query. Raises RateLimited when they asked too often."""
        if self.limiter is not None:
            await self.limiter.check_queries(caller_id)
        if query.ticket_no is not None:
            ticket = await self.store.get(query.ticket_no)
            mine = [ticket] if ticket is not None and _belongs(ticket, caller_id) else []
            more = 0
        else:
            mine, more = await self._recent(caller_id)
        found = [progress_of(t, await self.store.history(t.ticket_no), self.tz) for t in mine]
        return Answer(reply_text(query, found, more), tuple(t.ticket_no for t in mine))

    async def _recent(self, caller_id: str) -> tuple[list[Ticket], int]:
        """The caller's LISTED most recent tickets in their index, and how many more there are."""
        index = keys.caller_index(caller_id)
        nos = sorted(text(m) for m in await self.store.redis.smembers(index))
        tickets = [t for t in await self.store.get_many(nos) if t is not None]
        erased = [t.ticket_no for t in tickets if t.personal_data_removed_at is not None]
        if erased:
            await self.store.redis.srem(index, *erased)
        mine = sorted(
            (t for t in tickets if _belongs(t, caller_id)), key=lambda t: t.received_at, reverse=True
        )
        return mine[:LISTED], max(0, len(mine) - LISTED)


def _belongs(ticket: Ticket, caller_id: str) -> bool:
    return (
        bool(caller_id) and ticket.caller.caller_id == caller_id and ticket.personal_data_removed_at is None
    )
