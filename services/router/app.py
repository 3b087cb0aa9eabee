"""The router's workers. The router assigns classified appeals, follows the survey, fires deadline
timers and relays the outbox; the meetings worker opens the joint meetings that escalations ask for,
and attaches their tickets.

`RouterHandlers` does the work, one method per event batch or periodic job: load, decide (the pure
modules workflow / rules / sla / timers / meetings), write and publish. `build_app` and
`build_meetings_app` only wire it. With ROUTER_CONSUME=false a router replica runs only the timer
scan and the outbox relay.

The meetings are a process of their own so that they can wait while the machine is short of CPU:
in a flood a hotspot's meeting takes tickets at every batch, a tenth of the router's work, and none
of it is on the way to an assignment. Run at the lowest priority beside the others
(`services.launcher.OFF_CALLERS_PATH`), it lets the assignments go first: in two-minute floods at
2,000 appeals a second the queue then cleared by the end (docs/performance.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from zoneinfo import ZoneInfo

from faststream import FastStream

from services.router import meetings, timers, workflow
from services.router.rules import FIRST_CONTACT, Precedent, answered_on_call, handled_on_spot, routing_for
from services.router.service import Escalation, FollowUps, Hotspots, MeetingStore, Precedents
from services.router.sla import deadlines
from shared.bus import callers_path, publish, relay_outbox
from shared.city import City
from shared.decisions import Change, Decision
from shared.events import AppealClassified, Event, SurveyAnswered, SurveySent, TicketAssigned, TicketUpdated
from shared.metrics import TICKET_TRANSITIONS, TICKETS_ASSIGNED
from shared.runtime import Runtime, run_at_start, run_periodically
from shared.settings import Settings
from shared.store import Read, Result, Then, TicketStore, apply_and_publish

NAME = "router"
MEETINGS = "meetings"
log = logging.getLogger(__name__)

Send = Callable[[Sequence[Event]], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


class RouterHandlers:
    """What the router does with each batch and on each periodic round (tests drive it directly).

    `send` publishes events and returns once the broker acknowledged them; `relay` republishes what
    a crashed writer left in the outbox and returns how many. Every ticket write goes through the
    store with the router's follow-ups attached (timers and queues in the same MULTI)."""

    def __init__(
        self,
        city: City,
        store: TicketStore,
        send: Send,
        relay: Callable[[], Awaitable[int]],
        *,
        tz: ZoneInfo,
        review_threshold: float,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.city, self.store, self.send, self._relay = city, store, send, relay
        self.tz, self.review_threshold, self.clock = tz, review_threshold, clock
        sup = city.sla.supervision
        follow = FollowUps.attach(store, sup)
        self.timers, self.queues = follow.timers, follow.queues
        self.meetings = MeetingStore(store.redis, store, precedent_days=sup.meeting_precedent_days)
        self.hotspots = Hotspots(store.redis, sup)
        self.precedents = Precedents(store.redis)

    async def _apply(self, changes: Sequence[Change], then: Then | None = None) -> list[Result]:
        return await apply_and_publish(self.store, changes, self.send, then)

    async def _transitions(self, changes: Sequence[Change]) -> None:
        for _, events in await self._apply(changes):
            for e in events:
                if isinstance(e, TicketUpdated):
                    TICKET_TRANSITIONS.labels(action=e.action).inc()

    # --- appeal.classified ------------------------------------------------------------------------

    def assignment(self, classified: AppealClassified, precedent: Precedent | None = None) -> Decision:
        """The assignment decision for one classified appeal; `precedent`: its cluster's, if any
        (a joint meeting named the lead of its category in its grid: `rules.following_precedent`)."""
        # A person's correction is routed by the rules whatever the model's confidence was; otherwise
        # the threshold is the one the classifier applied (each model picks its own on held-out data).
        if classified.reviewed_by:
            threshold = 0.0
        elif classified.review_threshold is not None:
            threshold = classified.review_threshold
        else:
            threshold = self.review_threshold
        city = self.city
        others: tuple[str, ...] = ()
        appeal = classified.appeal
        if appeal.direct_answer and appeal.channel == "patrol":
            routing = handled_on_spot(city, classified.grid, appeal.operator_id)
        elif appeal.direct_answer:
            routing = answered_on_call(city, appeal.operator_id)
        else:
            routing, others = routing_for(
                city,
                classified.category,
                classified.grid,
                classified.confidence,
                threshold,
                classified.top,
                reviewed=bool(classified.reviewed_by),
                precedent=precedent,
                now=self.clock(),
            )
        urgent = classified.urgent or classified.appeal.urgent_flag
        # The lead's kind may set the class (a dispute assigned to a committee: mediation's time).
        due = deadlines(
            city, classified.category, urgent, classified.occurred_at, self.tz, department=routing.lead
        )
        return partial(
            workflow.assign,
            classified=classified,
            routing=routing,
            due=due,
            city=city,
            contested=others,
            tz=self.tz,
        )

    async def classified(self, batch: list[AppealClassified]) -> None:
        """Assign each classified appeal and count the assigned ones into their hotspot clusters;
        the tickets a hot cluster calls to its meeting are held in the same write. The clusters'
        precedents are read first, the batch's in one MGET (none for a batch of calls answered on
        the spot and appeals with no grid)."""
        found = await self.precedents.read_many(
            (c.category, c.grid.grid) for c in batch if not c.appeal.direct_answer
        )
        changes = [
            Change(c.ticket_no, self.assignment(c, found.get((c.category, c.grid.grid or "")))) for c in batch
        ]
        for _, events in await self._apply(changes, then=self.hotspot_holds):
            for e in events:
                if isinstance(e, TicketAssigned):
                    TICKETS_ASSIGNED.labels(department=e.department.id, via=e.via).inc()

    async def hotspot_holds(self, results: Sequence[Result], read: Read) -> list[Change]:
        """Count newly assigned tickets into their clusters; a hot cluster becomes one meeting, and
        the holds of its tickets join the assignments' write (`TicketStore.apply_many`'s `then`):
        a ticket assigned and held in one batch is read, parsed and written once. A cluster that
        just turned hot brings all its tickets (the older ones read in the same transaction); one
        whose meeting is already open only this batch's (the others are there already). The round
        trips are per batch, not per cluster: one to count, one to claim new meetings, one to read
        older members."""
        # An appeal closed at first contact is done: it joins no meeting.
        assigned = {
            t.ticket_no: (t, e)
            for t, events in results
            if t is not None and t.assigned_via not in FIRST_CONTACT
            for e in events
            if isinstance(e, TicketAssigned)
        }
        hot = await self.hotspots.record([t for t, _ in assigned.values()], time.time())
        if not hot:
            return []
        claimed = await self.meetings.open_hotspots(
            {cluster: joining[0] for cluster, (mid, joining) in hot.items() if mid is None}
        )
        known = await read([n for _, joining in hot.values() for n in joining])
        desk, now = self.city.responsibilities.dispatch_desk, self.clock()
        changes: list[Change] = []
        for cluster, (open_mid, joining) in hot.items():
            mid = open_mid or claimed[cluster]
            members = [t for n in joining if (t := known[n]) is not None]
            summoned = {t.department.id for t in members if t.department} | {
                d.id for t in members for d in t.co_departments
            }
            summoned.discard(desk)
            category, grid = cluster
            spec = meetings.spec(
                self.city,
                mid=mid,
                reason="hotspot",
                grid=grid,
                category=category,
                summoned=sorted(summoned),
                now=now,
                tz=self.tz,
            )
            hold = partial(workflow.hold_for_meeting, spec=spec, now=now)
            # A ticket assigned in this batch is held as a consequence of that assignment (see
            # `workflow.hold_for_meeting`); the cluster's older tickets were assigned before.
            changes += [
                Change(no, partial(hold, cause=a[1]) if (a := assigned.get(no)) else hold) for no in joining
            ]
        return changes

    # --- the survey -------------------------------------------------------------------------------

    async def surveys_sent(self, batch: list[SurveySent]) -> None:
        await self._transitions([Change(s.ticket_no, partial(workflow.survey_sent, sent=s)) for s in batch])

    async def surveys_answered(self, batch: list[SurveyAnswered]) -> None:
        record_rating = partial(workflow.record_rating, city=self.city, tz=self.tz)
        await self._transitions([Change(a.ticket_no, partial(record_rating, answer=a)) for a in batch])

    # --- ticket.updated: escalations open meetings --------------------------------------------------

    async def updates(self, batch: Sequence[Escalation]) -> None:
        """Open (or join) the joint meeting each escalation asks for: the meetings worker's one
        handler. Escalations come from the router and from the API (a second return), so the
        meeting is opened here, from the event, whoever wrote it. A ticket that reached a meeting
        just after its decision follows it."""
        escalations = [u for u in batch if u.meeting is not None]
        if not escalations:
            return
        touched = await self.meetings.open_from(escalations, partial(workflow.dept_ref, self.city))
        now = self.clock()
        late = [
            Change(
                no,
                partial(
                    workflow.meeting_decided,
                    mid=m.meeting_id,
                    lead=m.lead,
                    note=m.note,
                    city=self.city,
                    tz=self.tz,
                    now=now,
                ),
            )
            for m, nos in touched
            if m.status == "decided" and m.lead is not None
            for no in nos
        ]
        if late:
            await self._apply(late)

    # --- periodic jobs ------------------------------------------------------------------------------

    async def fire_due_timers(self) -> int:
        """Fire the deadline timers that are due (claimed, so replicas share them). Returns how many."""
        due = await self.timers.claim_due(time.time())
        if not due:
            return 0
        await self._transitions(
            [Change(t.ticket_no, partial(timers.fire, timer=t, city=self.city, tz=self.tz)) for t in due]
        )
        await self.timers.done(due)
        return len(due)

    async def list_existing_meetings(self) -> int:
        """Put the meetings written before the departments' lists of meetings existed on those
        lists (`MeetingStore.list_existing`; a meeting listed already costs a later start one
        lookup, not a write). Returns how many it listed."""
        if n := await self.meetings.list_existing():
            log.info("listed %d joint meeting(s) written before the departments' lists existed", n)
        return n

    async def band_held_tickets(self) -> int:
        """Move the tickets open meetings hold to the queues' band of held tickets where they were
        indexed before it existed (`Queues.band_held`), so the desk's returned tickets a meeting
        took are listed before the meeting decides. Returns how many moved."""
        moved = 0
        async for nos in self.meetings.open_tickets():
            for i in range(0, len(nos), 500):
                moved += await self.queues.band_held(nos[i : i + 500])
        if moved:
            log.info("moved %d ticket(s) held by joint meetings to the queues' band of held tickets", moved)
        return moved

    async def relay(self) -> int:
        """Publish again the events whose writer died between Redis and Kafka (consumers dedupe),
        and publish the erasures' notices, which only the outbox carries. Returns how many of the
        first."""
        if n := await self._relay():
            log.warning("relayed %d unconfirmed event(s) from the outbox", n)
        return n


def _handlers(rt: Runtime) -> RouterHandlers:
    return RouterHandlers(
        rt.city,
        rt.store,
        partial(publish, rt.publisher),
        partial(relay_outbox, rt.publisher, rt.store),
        tz=ZoneInfo(rt.settings.timezone),
        review_threshold=rt.settings.review_confidence_threshold,
    )


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_router)
    handlers = _handlers(rt)
    if rt.settings.router_consume:
        # On the caller's path to the assignment: polled often (see shared.bus).
        rt.subscribe(AppealClassified, handlers.classified, **callers_path(rt.settings))
        rt.subscribe_each({SurveySent: handlers.surveys_sent, SurveyAnswered: handlers.surveys_answered})
    # Every replica, consuming or not: an upgrade must not leave a meeting off the lists of the
    # departments it summons (a department finds its meetings on its list alone), and the run is
    # idempotent.
    run_at_start(app, handlers.list_existing_meetings, "listing the existing meetings")
    run_at_start(app, handlers.band_held_tickets, "moving held tickets to their band")
    run_periodically(app, rt.settings.timer_scan_seconds, handlers.relay, "outbox relay")
    run_periodically(app, rt.settings.timer_scan_seconds, handlers.fire_due_timers, "timer scan")
    return app


def build_meetings_app(settings: Settings | None = None) -> FastStream:
    """The meetings worker: `ticket.updated`, for the escalations (`RouterHandlers.updates`)."""
    rt = Runtime.create(MEETINGS, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_meetings)
    rt.subscribe_each({Escalation: _handlers(rt).updates})
    return app
