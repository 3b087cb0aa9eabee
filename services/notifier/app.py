"""The notifier worker: acknowledgements, progress messages, the callback survey after resolution, the
scheduled jobs (held messages, survey reminders and timeouts), and the counters of the three rates."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from faststream import FastStream

from services.notifier.ratebook import RateBook
from services.notifier.service import Notifier, local_datetime
from shared import topics
from shared.bus import batch_subscriber, parse_or_dead_letter, publish
from shared.events import AppealReceived, Event, SurveyAnswered, TicketAssigned, TicketUpdated
from shared.runtime import Runtime, run_periodically
from shared.settings import Settings

NAME = "notifier"
# WeChat answers in its own passive reply; the others hear from us by SMS.
ACKNOWLEDGED_BY_SMS = {"hotline", "sms", "box", "open311", "web"}
GAUGE_SECONDS = 60
E = TypeVar("E", bound=Event)


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_notifier)
    notifier = Notifier.from_settings(rt.settings, rt.store, partial(publish, rt.publisher))
    book = RateBook.from_settings(rt.redis, rt.city, rt.settings)
    handlers = Handlers(notifier, book)

    for topic, model, handle in (
        (topics.APPEAL_RECEIVED, AppealReceived, handlers.appeals),
        (topics.TICKET_ASSIGNED, TicketAssigned, handlers.assignments),
        (topics.TICKET_UPDATED, TicketUpdated, handlers.updates),
        (topics.SURVEY_ANSWERED, SurveyAnswered, handlers.answers),
    ):
        subscribe(rt, topic, model, handle)

    next_gauges = [0.0]

    async def scan() -> None:
        await notifier.scan()
        if time.monotonic() >= next_gauges[0]:
            await book.refresh_gauges(notifier.clock())
            next_gauges[0] = time.monotonic() + GAUGE_SECONDS

    run_periodically(app, rt.settings.timer_scan_seconds, scan, "notifier scan")
    return app


def subscribe(rt: Runtime, topic: str, model: type[E], handle: Callable[[list[E]], Awaitable[None]]) -> None:
    """One batch subscriber: parse (poison to the DLQ), then hand the events to `handle`. Each topic
    has its own consumer group: four consumers in one group rebalance each other at every start."""

    @batch_subscriber(rt.broker, topic, NAME)
    async def consume(bodies: list[bytes]) -> None:
        await handle(await parse_or_dead_letter(rt.publisher, model, topic, bodies, NAME))


class Handlers:
    """What the subscribers do with a parsed batch (kept apart so tests can drive them in-process)."""

    def __init__(self, notifier: Notifier, book: RateBook) -> None:
        self.notifier = notifier
        self.book = book
        self.store = notifier.store

    async def appeals(self, appeals: list[AppealReceived]) -> None:
        wanted = [a for a in appeals if a.channel in ACKNOWLEDGED_BY_SMS and a.caller.caller_id]
        phones = await self.notifier.phones([a.caller.caller_id for a in wanted])  # type: ignore[misc]
        await self.notifier.notify_many(
            [
                (a.event_id, self.notifier.ack_message(a.ticket_no, phone, urgent=a.urgent_flag))
                for a, phone in zip(wanted, phones, strict=False)
                if phone
            ]
        )

    async def assignments(self, assigned: list[TicketAssigned]) -> None:
        await self.book.record(assigned, [None] * len(assigned))
        meetings = [a for a in assigned if a.via == "meeting"]
        for a, ticket in zip(
            meetings, await self.store.get_many([a.ticket_no for a in meetings]), strict=False
        ):
            if ticket is not None:
                await self.notifier.progress(a, ticket, "progress_meeting")

    async def updates(self, updates: list[TicketUpdated]) -> None:
        await self.notifier.supervise(
            [u for u in updates if u.action in ("overdue", "escalated")], self.book.city
        )
        wanted = [u for u in updates if u.action in ("accepted", "resolved", "extension_approved")]
        tickets = await self.store.get_many([u.ticket_no for u in wanted])
        accepted = [(u, t) for u, t in zip(wanted, tickets, strict=False) if u.action == "accepted"]
        await self.book.record([u for u, _ in accepted], [t for _, t in accepted])
        out: list[Event] = []
        for update, ticket in zip(wanted, tickets, strict=False):
            if ticket is None:
                continue
            if update.action == "resolved":
                out.extend(await self.notifier.start_survey(update, ticket))
            elif update.action == "extension_approved":
                await self.notifier.progress(
                    update,
                    ticket,
                    "progress_extension",
                    resolve_by=self._local_date(update.extension and update.extension.resolve_by),
                )
        await self.notifier.publish(out)

    async def answers(self, answers: list[SurveyAnswered]) -> None:
        counted = [a for a in answers if a.outcome != "comment"]
        await self.book.record(counted, await self.store.get_many([a.ticket_no for a in counted]))

    def _local_date(self, value: object) -> str:
        """ "2026-11-30T18:00:00+08:00" -> "至11月30日"; nothing when the event does not say."""
        d = local_datetime(value, self.book.tz)
        return f"至{d.month}月{d.day}日" if d else ""
