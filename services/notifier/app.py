"""The notifier worker: acknowledgements for new appeals, the callback survey after resolution."""

from __future__ import annotations

from faststream import FastStream

from services.notifier.gateway import OutboxGateway
from services.notifier.service import Notifier
from shared import topics
from shared.bus import batch_subscriber, parse_or_dead_letter, publish
from shared.events import AppealReceived, TicketUpdated
from shared.runtime import Runtime
from shared.settings import Settings

NAME = "notifier"
# WeChat answers in its own passive reply; the others hear from us by SMS.
ACKNOWLEDGED_BY_SMS = {"hotline", "sms", "box", "open311", "web"}


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_notifier)
    notifier = Notifier(rt.store, OutboxGateway(rt.redis))

    @batch_subscriber(rt.broker, topics.APPEAL_RECEIVED, NAME)
    async def acknowledge(bodies: list[bytes]) -> None:
        appeals = await parse_or_dead_letter(rt.publisher, AppealReceived, topics.APPEAL_RECEIVED, bodies, NAME)
        for a in appeals:
            if a.channel in ACKNOWLEDGED_BY_SMS and a.caller.caller_id:
                phone = (await rt.store.contact(a.caller.caller_id)).get("phone")
                if phone:
                    await notifier.acknowledge(a, a.ticket_no, phone)

    @batch_subscriber(rt.broker, topics.TICKET_UPDATED, NAME)
    async def follow_up(bodies: list[bytes]) -> None:
        updates = await parse_or_dead_letter(rt.publisher, TicketUpdated, topics.TICKET_UPDATED, bodies, NAME)
        resolved = [u for u in updates if u.action == "resolved"]
        tickets = await rt.store.get_many([u.ticket_no for u in resolved])
        surveys = []
        for update, ticket in zip(resolved, tickets):
            if ticket is not None and (survey := await notifier.start_survey(update, ticket)):
                surveys.append(survey)
        await publish(rt.publisher, surveys)

    return app
