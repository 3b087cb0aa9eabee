"""The notifier worker: acknowledgements, progress messages, the callback survey after resolution, the
scheduled jobs (held messages, survey reminders and timeouts), and the counters of the three rates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from datetime import datetime
from functools import partial
from typing import Any

from faststream import FastStream

from services.notifier.ratebook import RateBook
from services.notifier.service import Notifier
from shared import topics
from shared.bus import BATCH_SUBSCRIBER, parse_or_dead_letter, publish, raw_body
from shared.events import AppealReceived, Event, SurveyAnswered, TicketAssigned, TicketUpdated
from shared.runtime import Runtime
from shared.settings import Settings

NAME = "notifier"
log = logging.getLogger(__name__)
# WeChat answers in its own passive reply; the others hear from us by SMS.
ACKNOWLEDGED_BY_SMS = {"hotline", "sms", "box", "open311", "web"}
GAUGE_SECONDS = 60
CONCURRENT_SENDS = 32


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_notifier)
    notifier = Notifier.from_settings(rt.settings, rt.store, partial(publish, rt.broker))
    book = RateBook.from_settings(rt.redis, rt.city, rt.settings)
    handlers = Handlers(notifier, book)

    @rt.broker.subscriber(topics.APPEAL_RECEIVED, group_id=NAME, decoder=raw_body, **BATCH_SUBSCRIBER)
    async def on_appeals(bodies: list[bytes]) -> None:
        await handlers.appeals(await parse_or_dead_letter(
            rt.broker, AppealReceived, topics.APPEAL_RECEIVED, bodies, NAME))

    @rt.broker.subscriber(topics.TICKET_ASSIGNED, group_id=NAME, decoder=raw_body, **BATCH_SUBSCRIBER)
    async def on_assignments(bodies: list[bytes]) -> None:
        await handlers.assignments(await parse_or_dead_letter(
            rt.broker, TicketAssigned, topics.TICKET_ASSIGNED, bodies, NAME))

    @rt.broker.subscriber(topics.TICKET_UPDATED, group_id=NAME, decoder=raw_body, **BATCH_SUBSCRIBER)
    async def on_updates(bodies: list[bytes]) -> None:
        await handlers.updates(await parse_or_dead_letter(
            rt.broker, TicketUpdated, topics.TICKET_UPDATED, bodies, NAME))

    @rt.broker.subscriber(topics.SURVEY_ANSWERED, group_id=NAME, decoder=raw_body, **BATCH_SUBSCRIBER)
    async def on_answers(bodies: list[bytes]) -> None:
        await handlers.answers(await parse_or_dead_letter(
            rt.broker, SurveyAnswered, topics.SURVEY_ANSWERED, bodies, NAME))

    background: list[asyncio.Task] = []

    async def scan_forever() -> None:
        next_gauges = 0.0
        while True:
            await asyncio.sleep(rt.settings.timer_scan_seconds)
            try:
                await notifier.scan()
                if time.monotonic() >= next_gauges:
                    await book.refresh_gauges(notifier.clock())
                    next_gauges = time.monotonic() + GAUGE_SECONDS
            except Exception:  # keep scanning; the next round retries
                log.exception("notifier scan failed")

    @app.after_startup
    async def start_background() -> None:
        background.append(asyncio.create_task(scan_forever()))

    @app.on_shutdown
    async def stop_background() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return app


async def bounded_gather(coros: list[Coroutine[Any, Any, Any]], limit: int = CONCURRENT_SENDS) -> None:
    """Run a batch's sends concurrently, a few at a time (each is several Redis round trips). All of
    them run; the first error is raised after (the batch is then read again; sends are idempotent)."""
    errors = []
    for i in range(0, len(coros), limit):
        results = await asyncio.gather(*coros[i:i + limit], return_exceptions=True)
        errors.extend(r for r in results if isinstance(r, BaseException))
    if errors:
        raise errors[0]


class Handlers:
    """What the subscribers do with a parsed batch (kept apart so tests can drive them in-process)."""

    def __init__(self, notifier: Notifier, book: RateBook) -> None:
        self.notifier = notifier
        self.book = book
        self.store = notifier.store

    async def appeals(self, appeals: list[AppealReceived]) -> None:
        wanted = [a for a in appeals if a.channel in ACKNOWLEDGED_BY_SMS and a.caller.caller_id]
        phones = await self.notifier.phones([a.caller.caller_id for a in wanted])  # type: ignore[misc]
        await bounded_gather([
            self.notifier.acknowledge(a, a.ticket_no, phone, urgent=a.urgent_flag)
            for a, phone in zip(wanted, phones) if phone
        ])

    async def assignments(self, assigned: list[TicketAssigned]) -> None:
        await self.book.record(assigned, [None] * len(assigned))
        meetings = [a for a in assigned if a.via == "meeting"]
        for a, ticket in zip(meetings, await self.store.get_many([a.ticket_no for a in meetings])):
            if ticket is not None:
                await self.notifier.progress(a, ticket, "progress_meeting")

    async def updates(self, updates: list[TicketUpdated]) -> None:
        wanted = [u for u in updates if u.action in ("accepted", "resolved", "extension_approved")]
        tickets = await self.store.get_many([u.ticket_no for u in wanted])
        accepted = [(u, t) for u, t in zip(wanted, tickets) if u.action == "accepted"]
        await self.book.record([u for u, _ in accepted], [t for _, t in accepted])
        out: list[Event] = []
        for update, ticket in zip(wanted, tickets):
            if ticket is None:
                continue
            if update.action == "resolved":
                out.extend(await self.notifier.start_survey(update, ticket))
            elif update.action == "extension_approved":
                await self.notifier.progress(update, ticket, "progress_extension",
                                             resolve_by=self._local_date(update.data.get("resolve_by")))
        await self.notifier.publish(out)

    async def answers(self, answers: list[SurveyAnswered]) -> None:
        counted = [a for a in answers if a.outcome != "comment"]
        await self.book.record(counted, await self.store.get_many([a.ticket_no for a in counted]))

    def _local_date(self, value: object) -> str:
        """"2026-11-30T18:00:00+08:00" -> "至11月30日"; nothing when the event does not say."""
        try:
            d = datetime.fromisoformat(str(value)).astimezone(self.book.tz)
        except ValueError:
            return ""
        return f"至{d.month}月{d.day}日"
