"""The router worker: assigns classified appeals, follows the survey, and relays the outbox.

Subscribers only load, decide (services.router.workflow / rules / sla) and publish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from zoneinfo import ZoneInfo

from faststream import FastStream

from services.router import workflow
from services.router.rules import route
from services.router.sla import deadlines
from shared import topics
from shared.bus import batch_subscriber, parse_or_dead_letter, publish, relay_outbox
from shared.events import AppealClassified, Event, SurveyAnswered, SurveySent
from shared.metrics import BATCH_SECONDS, TICKET_TRANSITIONS, TICKETS_ASSIGNED
from shared.runtime import Runtime
from shared.settings import Settings
from shared.store import Change, apply_and_publish

NAME = "router"
log = logging.getLogger(__name__)


def assignment_decision(rt: Runtime, tz: ZoneInfo, classified: AppealClassified):
    routing = route(
        rt.city, classified.category, classified.grid, classified.confidence,
        rt.settings.review_confidence_threshold,
    )
    due = deadlines(rt.city, classified.category, classified.urgent, classified.occurred_at, tz)
    return partial(workflow.assign, classified=classified, routing=routing, due=due, city=rt.city)


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    tz = ZoneInfo(rt.settings.timezone)
    app = rt.app(metrics_port=rt.settings.metrics_port_router)
    send = partial(publish, rt.publisher)

    async def apply(changes: list[Change]) -> list[Event]:
        results = await apply_and_publish(rt.store, changes, send)
        return [e for _, events in results for e in events]

    @batch_subscriber(rt.broker, topics.APPEAL_CLASSIFIED, NAME)
    async def on_appeals_classified(bodies: list[bytes]) -> None:
        started = time.perf_counter()
        classified = await parse_or_dead_letter(
            rt.publisher, AppealClassified, topics.APPEAL_CLASSIFIED, bodies, NAME
        )
        changes = [Change(c.ticket_no, assignment_decision(rt, tz, c)) for c in classified]
        for e in await apply(changes):
            TICKETS_ASSIGNED.labels(department=e.department.id, via=e.via).inc()
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
        changes = [Change(a.ticket_no, partial(workflow.rate, answer=a)) for a in answers]
        for e in await apply(changes):
            TICKET_TRANSITIONS.labels(action=e.action).inc()

    background: list[asyncio.Task] = []

    async def relay_forever() -> None:
        # Events whose writer died between Redis and Kafka: publish them again (consumers dedupe).
        while True:
            await asyncio.sleep(rt.settings.timer_scan_seconds)
            try:
                if n := await relay_outbox(rt.publisher, rt.store):
                    log.warning("relayed %d unconfirmed event(s) from the outbox", n)
            except Exception:  # keep relaying; the next scan retries
                log.exception("outbox relay failed")

    @app.after_startup
    async def start_background() -> None:
        background.append(asyncio.create_task(relay_forever()))

    @app.on_shutdown
    async def stop_background() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return app

