"""The router worker: assigns classified appeals, follows the department workflow and the survey,
fires deadline timers, convenes joint meetings, and relays the outbox.

Subscribers only load, decide (services.router.workflow / rules / sla / timers / meetings) and publish.
With ROUTER_CONSUME=false a replica runs only the timer scan and the outbox relay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from zoneinfo import ZoneInfo

from faststream import FastStream

from services.router import timers, workflow
from services.router.rules import contested, route
from services.router.service import FollowUps, Hotspots, MeetingStore, Queues, RecentIds, TimerStore
from services.router.sla import deadlines
from shared import topics
from shared.bus import batch_subscriber, parse_or_dead_letter, publish, relay_outbox
from shared.events import AppealClassified, Event, SurveyAnswered, SurveySent, TicketAssigned, TicketUpdated
from shared.metrics import BATCH_SECONDS, TICKET_TRANSITIONS, TICKETS_ASSIGNED
from shared.runtime import Runtime, run_periodically
from shared.settings import Settings
from shared.store import Change, apply_and_publish
from shared.tickets import Ticket

NAME = "router"
log = logging.getLogger(__name__)


def assignment_decision(rt: Runtime, tz: ZoneInfo, classified: AppealClassified):
    # A person's correction is routed by the rules whatever the model's confidence was; otherwise the
    # threshold is the one the classifier applied (each model chooses its own on held-out data).
    if classified.reviewed_by:
        threshold = 0.0
    elif classified.review_threshold is not None:
        threshold = classified.review_threshold
    else:
        threshold = rt.settings.review_confidence_threshold
    routing = route(rt.city, classified.category, classified.grid, classified.confidence, threshold)
    others = contested(
        rt.city, routing, classified.top, classified.grid, rt.city.sla.supervision.ambiguity_margin
    )
    urgent = classified.urgent or classified.appeal.urgent_flag
    due = deadlines(rt.city, classified.category, urgent, classified.occurred_at, tz)
    return partial(
        workflow.assign,
        classified=classified,
        routing=routing,
        due=due,
        city=rt.city,
        contested=others,
        tz=tz,
    )


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    tz = ZoneInfo(rt.settings.timezone)
    sup = rt.city.sla.supervision
    app = rt.app(metrics_port=rt.settings.metrics_port_router)
    timer_store = TimerStore(rt.redis, sup)
    queues = Queues(rt.redis, rt.store)
    # Every ticket this worker writes gets its timers and queue entry in the same MULTI; the events
    # of those writes need no following when they come back (`followed`). Others' writes (the API,
    # another replica, the relay after a crash) are followed from their events.
    rt.store.on_write = FollowUps(timer_store, queues)
    followed = RecentIds()

    async def send(events: Sequence[Event]) -> None:
        followed.add(e.event_id for e in events if e.topic in (topics.TICKET_ASSIGNED, topics.TICKET_UPDATED))
        await publish(rt.publisher, events)

    meeting_store = MeetingStore(rt.redis, rt.store)
    hotspots = Hotspots(rt.redis, sup)

    def ref(dept_id: str):
        return workflow.dept_ref(rt.city, dept_id)

    async def apply(changes: list[Change]) -> list[Event]:
        results = await apply_and_publish(rt.store, changes, send)
        return [e for _, events in results for e in events]

    async def convene_hotspots(tickets: list[Ticket]) -> None:
        """Count newly assigned tickets into their clusters; a hot cluster becomes one meeting.
        A cluster that just turned hot brings all its tickets; one whose meeting is already open
        only this batch's (the others are there already): the work stays per batch, not per cluster,
        and so do the round trips (one to count, one to claim new meetings, one to read members)."""
        hot = await hotspots.record(tickets, time.time())
        if not hot:
            return
        claimed = await meeting_store.open_hotspots(
            {cluster: joining[0] for cluster, (mid, joining) in hot.items() if mid is None}
        )
        known = {t.ticket_no: t for t in tickets}
        older = [n for _, joining in hot.values() for n in joining if n not in known]
        known.update((t.ticket_no, t) for t in await rt.store.get_many(older) if t is not None)
        changes = []
        for cluster, (mid, joining) in hot.items():
            mid = mid or claimed[cluster]
            members = [known[n] for n in joining if n in known]
            summoned = {t.department.id for t in members if t.department} | {
                d.id for t in members for d in t.co_departments
            }
            summoned.discard(rt.city.responsibilities.dispatch_desk)
            changes += [
                Change(
                    no,
                    partial(
                        workflow.hold_for_meeting,
                        mid=mid,
                        reason="hotspot",
                        summoned=sorted(summoned),
                        city=rt.city,
                        tz=tz,
                        now=datetime.now(UTC),
                    ),
                )
                for no in joining
            ]
        if changes:
            await apply(changes)

    if rt.settings.router_consume:

        @batch_subscriber(rt.broker, topics.APPEAL_CLASSIFIED, NAME)
        async def on_appeals_classified(bodies: list[bytes]) -> None:
            started = time.perf_counter()
            classified = await parse_or_dead_letter(
                rt.publisher, AppealClassified, topics.APPEAL_CLASSIFIED, bodies, NAME
            )
            changes = [Change(c.ticket_no, assignment_decision(rt, tz, c)) for c in classified]
            assigned = []
            for ticket, events in await apply_and_publish(rt.store, changes, send):
                for e in events:
                    if isinstance(e, TicketAssigned):
                        TICKETS_ASSIGNED.labels(department=e.department.id, via=e.via).inc()
                        assigned.append(ticket)
            await convene_hotspots(assigned)
            BATCH_SECONDS.labels(consumer=NAME).observe(time.perf_counter() - started)

        @batch_subscriber(rt.broker, topics.SURVEY_SENT, NAME)
        async def on_surveys_sent(bodies: list[bytes]) -> None:
            sent = await parse_or_dead_letter(rt.publisher, SurveySent, topics.SURVEY_SENT, bodies, NAME)
            changes = [Change(s.ticket_no, partial(workflow.survey_sent, sent=s)) for s in sent]
            for e in await apply(changes):
                TICKET_TRANSITIONS.labels(action=e.action).inc()

        @batch_subscriber(rt.broker, topics.SURVEY_ANSWERED, NAME)
        async def on_surveys_answered(bodies: list[bytes]) -> None:
            answers = await parse_or_dead_letter(
                rt.publisher, SurveyAnswered, topics.SURVEY_ANSWERED, bodies, NAME
            )
            changes = [
                Change(a.ticket_no, partial(workflow.rate, answer=a, city=rt.city, tz=tz)) for a in answers
            ]
            for e in await apply(changes):
                TICKET_TRANSITIONS.labels(action=e.action).inc()

        # The router follows its own facts (whoever wrote them: this worker, the API, a timer) to keep
        # the timers and the department queues current and to open meetings. Everything here is
        # idempotent, so a replayed batch changes nothing. Each in a group of its own: members joining
        # one group rebalance all of its consumers, which delays the hot path at every start.
        @batch_subscriber(rt.broker, topics.TICKET_ASSIGNED, NAME)
        async def on_tickets_assigned(bodies: list[bytes]) -> None:
            assigned = await parse_or_dead_letter(
                rt.publisher, TicketAssigned, topics.TICKET_ASSIGNED, bodies, NAME
            )
            await follow(assigned)

        @batch_subscriber(rt.broker, topics.TICKET_UPDATED, NAME)
        async def on_tickets_updated(bodies: list[bytes]) -> None:
            updates = await parse_or_dead_letter(
                rt.publisher, TicketUpdated, topics.TICKET_UPDATED, bodies, NAME
            )
            escalations = [u for u in updates if u.action == "escalated" and "meeting" in u.data]
            if escalations:
                touched = await meeting_store.open_from(escalations, ref, send)
                # A ticket that reached a meeting just after its decision follows the decision.
                late = [
                    Change(
                        no,
                        partial(
                            workflow.meeting_decided,
                            mid=m.meeting_id,
                            lead=m.lead,
                            note=m.note,
                            city=rt.city,
                            tz=tz,
                            now=datetime.now(UTC),
                        ),
                    )
                    for m, nos in touched
                    if m.status == "decided"
                    for no in nos
                ]
                if late:
                    await apply(late)
            await follow(updates)

    async def follow(events: Sequence[Event]) -> None:
        await rt.store.rewrite_follow_ups([e.ticket_no for e in events if not followed.pop(e.event_id)])

    async def fire_due_timers() -> int:
        due = await timer_store.claim_due(time.time())
        if not due:
            return 0
        changes = [Change(t.ticket_no, partial(timers.fire, timer=t, city=rt.city, tz=tz)) for t in due]
        for e in await apply(changes):
            TICKET_TRANSITIONS.labels(action=e.action).inc()
        await timer_store.done(due)
        return len(due)

    async def relay() -> None:
        # Events whose writer died between Redis and Kafka: publish them again (consumers dedupe).
        if n := await relay_outbox(rt.publisher, rt.store):
            log.warning("relayed %d unconfirmed event(s) from the outbox", n)

    run_periodically(app, rt.settings.timer_scan_seconds, relay, "outbox relay")
    run_periodically(app, rt.settings.timer_scan_seconds, fire_due_timers, "timer scan")

    return app
