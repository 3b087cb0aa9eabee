"""What the operator sees before submitting: the suggested category, grid and department, the
open tickets this call is probably about (same caller, or a near-identical text in the same grid in
the last 7 days), the knowledge base's answers that fit it (an operator may answer on the call),
and, when asked, the caller's history in the record (来电历史: how often they appealed, their last
tickets, closed ones too). Reads the duplicate index the intake worker keeps (see app.py, keys.py);
the history comes from a lookup the API gives it (services/records/callers.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Container, Coroutine, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

from services.classifier.service import ServedClassifier
from services.intake import keys
from services.intake.domain import Submission
from services.intake.duplicates import DUPLICATE_WINDOW_SECONDS, near_identical, similarity
from services.intake.knowledge import KnowledgeBase
from shared.city import City
from shared.redis_client import text
from shared.store import TicketStore
from shared.tickets import Ticket

GRID_CANDIDATES = 500  # the most recent tickets of a grid compared with the text (bounds the work)
# A caller id -> the caller's history as the preview shows it, or None when it cannot be had now.
HistoryLookup = Callable[[str], Coroutine[Any, Any, dict[str, Any] | None]]


@dataclass(frozen=True)
class Duplicate:
    ticket: Ticket
    # "same_caller" (the caller's open ticket of the same problem: its category or words, or the
    # caller asks after an earlier appeal), "caller_other" (the caller's open ticket of another
    # problem: a lead, never told as the one being handled), "similar_text", or "same_category" (the
    # grid's open tickets of the category the appeal is classified in, told in other words: residents
    # retell a problem their own way)
    reason: str
    similarity: float


SAME_CATEGORY_SHOWN = 3  # the most recent of them: a lead to check, not a verdict
# How alike a caller's own two texts must be to be one problem retold (a neighbour's must be near
# identical, `near_identical`: a caller retells their own problem more loosely, and is one person).
SAME_CALLER_SIMILAR = 0.3
# The reasons that say the appeal may be one already being handled (the operator tells the caller).
LIKELY = ("same_caller", "similar_text")


class Previewer:
    def __init__(
        self,
        city: City,
        store: TicketStore,
        classifiers: ServedClassifier,
        *,
        timezone: str = "Asia/Shanghai",
        history: HistoryLookup | None = None,
    ) -> None:
        self.city = city
        self.store = store
        # The classifier the workers serve (approved model, the city's cue lists), built on the
        # first preview and following approvals, so the suggestion is the one the pipeline makes.
        self.classifiers = classifiers
        # The city's file until the record's entries are loaded; then swapped on every change of
        # the base (the API's lifespan follows it, services/records/knowledge.py).
        self.knowledge = KnowledgeBase(city.knowledge, city)
        self.tz = ZoneInfo(timezone)
        self.history = history  # None: no record to ask (the preview has no history then)

    def today(self) -> date:
        """The local day: an answer's review age counts in the city's days."""
        return datetime.now(self.tz).date()

    async def preview(self, sub: Submission, *, history: bool = False) -> dict[str, Any]:
        """`history`: the caller's history too (`history` in the answer: absent when not asked for
        or no phone was given, null when the record could not say in time)."""
        caller = sub.caller.caller_id if sub.phone else None  # a phone's caller: the operator's case
        # Asked of the record while the text is classified, so it adds no wait of its own.
        past = (
            asyncio.create_task(self.history(caller))
            if history and caller and self.history is not None
            else None
        )
        try:
            result = await self._suggest(sub)
            if past is not None:
                result["history"] = await past
        finally:
            if past is not None and not past.done():
                past.cancel()  # the suggestion failed: nobody waits for the history
        return result

    async def _suggest(self, sub: Submission) -> dict[str, Any]:
        from services.router.rules import routing_for
        from services.router.service import Precedents

        classifier = await self.classifiers.current(self.store.redis)
        (c,) = await asyncio.to_thread(classifier.classify, [sub.appeal("preview")])
        # The threshold the classifier applied, as the router uses it.
        threshold = classifier.threshold if c.review_threshold is None else c.review_threshold
        # The cluster's precedent, as the router reads it (a joint meeting named its lead): one GET.
        precedent = await Precedents(self.store.redis).get(c.category, c.grid.grid)
        now = datetime.now(self.tz)
        routing, others = routing_for(
            self.city, c.category, c.grid, c.confidence, threshold, c.top, precedent=precedent, now=now
        )
        lead = self.city.department_by_id[routing.lead]
        duplicates = await self.duplicates(
            sub, c.grid.grid, c.category, follow_up=classifier.cues.follows_up(f"{sub.title} {sub.text}")
        )
        knowledge, today = self.knowledge, self.today()
        return {
            "category": {
                "id": c.category,
                "names": list(c.category_names),
                "confidence": c.confidence,
                "model_version": c.model_version,
            },
            "grid": c.grid.model_dump(),
            "department": {
                "id": lead.id,
                "name": lead.name,
                "via": routing.via,
                "explanation": routing.explanation,
                # Departments with as strong a claim: the router convenes a joint meeting to settle it.
                "contested_by": [self.city.department_by_id[d].name for d in others],
                # A joint meeting named the lead of this category in this grid (its precedent).
                "precedent": (
                    {
                        "meeting_id": precedent.meeting_id,
                        "decided_at": precedent.decided_at.astimezone(self.tz).isoformat(),
                        "until": precedent.until(self.city.sla.supervision.meeting_precedent_days)
                        .astimezone(self.tz)
                        .isoformat(),
                    }
                    if precedent is not None and routing.precedent == precedent.meeting_id
                    else None
                ),
            },
            "appeal_type": c.appeal_type,
            "urgent": c.urgent,
            # Sent as it is, it waits for a person (the desk) before any department has it: a low
            # confidence, no grid where the place decides the lead, or a place in question.
            "review": c.needs_review,
            "answers": [
                knowledge.view(s, today)
                for s in knowledge.search(f"{sub.title} {sub.text}", category=c.category)
            ],
            "duplicates": [
                {
                    "ticket_no": d.ticket.ticket_no,
                    "reason": d.reason,
                    "similarity": round(d.similarity, 2),
                    "status": d.ticket.status,
                    "text": d.ticket.text[:200],
                    "department": d.ticket.department.name if d.ticket.department else None,
                    "urges": d.ticket.urges,
                    "received_at": d.ticket.received_at.isoformat(),
                }
                for d in duplicates
            ],
        }

    async def duplicates(
        self, sub: Submission, grid: str | None, category: str | None = None, *, follow_up: bool = False
    ) -> list[Duplicate]:
        """Open tickets of the same caller, open tickets of the grid with a near-identical text, and
        after them the grid's latest open tickets of `category` (the same broken light in other
        words), those in `LIKELY` first. A caller's open ticket is likely the one they call about
        when it has the appeal's category or words like it, or when they ask after an earlier appeal
        (`follow_up`); else it is a lead (a caller with a noise complaint open who now reports a
        broken light is not told the noise ticket is being handled).
        A ticket whose resident's personal data was erased is never one: the tickets are read
        anyway, so their mark costs nothing to check, and it holds even when the erasure's notice
        never reached the intake worker (a broker lost after the relay sent it), which would leave
        the ticket in the caller's index for its 90 days. Such a ticket found there is taken out
        of it now, as the notice would have."""
        found: dict[str, Duplicate] = {}
        caller = sub.caller.caller_id
        mine = [text(m) for m in await self.store.redis.smembers(keys.caller_index(caller))] if caller else []
        erased: list[str] = []
        for t in await self.store.get_many(sorted(mine)):
            if t is not None and t.personal_data_removed_at is not None:
                erased.append(t.ticket_no)
            elif t is not None and t.is_open:
                alike = similarity(sub.text, t.text)
                same = (
                    follow_up
                    or alike >= SAME_CALLER_SIMILAR
                    or (category is not None and t.category == category)
                )
                found[t.ticket_no] = Duplicate(t, "same_caller" if same else "caller_other", alike)
        if erased and caller:
            await self.store.redis.srem(keys.caller_index(caller), *erased)
        if grid:
            kin: list[Duplicate] = []
            for t in await open_in_grid(self.store, grid, skip=found):
                if near_identical(sub.text, t.text):
                    found[t.ticket_no] = Duplicate(t, "similar_text", similarity(sub.text, t.text))
                elif category and t.category == category and len(kin) < SAME_CATEGORY_SHOWN:
                    kin.append(Duplicate(t, "same_category", similarity(sub.text, t.text)))
            found |= {d.ticket.ticket_no: d for d in kin}  # each of the grid's tickets is seen once
        return sorted(found.values(), key=lambda d: (d.reason not in LIKELY, -d.similarity))


async def open_in_grid(store: TicketStore, grid: str, skip: Container[str] = ()) -> list[Ticket]:
    """The open tickets of the grid's last 7 days (its duplicate index), most recent first, but
    those in `skip`: what a new text is compared with, and where the dispatch desk looks for the
    ticket a duplicate is to be merged into (并案). See `open_in_grids`."""
    return [t for t in (await open_in_grids(store, [grid]))[grid] if t.ticket_no not in skip]


async def open_in_grids(store: TicketStore, grids: Sequence[str]) -> dict[str, list[Ticket]]:
    """`open_in_grid` for several grids at once, in two round trips whatever their number (the
    indexes in one pipeline, then the tickets they name in one MGET, each ticket read once): the
    dispatch desk's queue asks for a page of cards at a time. The grid's index keeps erased
    tickets (a number there says nothing of who called); their text is a placeholder, which no
    text may be matched against, so they are left out."""
    wanted = list(dict.fromkeys(grids))
    if not wanted:
        return {}
    since = time.time() - DUPLICATE_WINDOW_SECONDS
    async with store.redis.pipeline(transaction=False) as p:
        for grid in wanted:
            p.zrevrangebyscore(keys.grid_index(grid), "+inf", since, start=0, num=GRID_CANDIDATES)
        indexes = [[text(no) for no in cast(list[bytes], found)] for found in await p.execute()]
    nos = list(dict.fromkeys(no for found in indexes for no in found))
    by_no = {
        t.ticket_no: t
        for t in await store.get_many(nos)
        if t is not None and t.is_open and t.personal_data_removed_at is None
    }

    # A ticket the dispatch desk moved to another grid stays in the index of the grid it left until
    # it ages out: it is that grid's no more.
    return {
        grid: [t for no in found if no in by_no and (t := by_no[no]).grid is not None and t.grid.grid == grid]
        for grid, found in zip(wanted, indexes, strict=True)
    }
