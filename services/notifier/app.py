"""The notifier worker: acknowledgements, progress and supervision messages, the callback survey after
resolution, the scheduled jobs (held messages, survey reminders and timeouts), and the scorecard's
counters (the three rates)."""

from __future__ import annotations

import time
from functools import partial

from faststream import FastStream

from services.notifier.scorecard import Scorecard
from services.notifier.service import Notifier
from services.notifier.texts import until_date
from shared.bus import publish
from shared.events import AppealReceived, Event, SurveyAnswered, TicketAssigned, TicketUpdated
from shared.runtime import Runtime, run_periodically
from shared.settings import Settings

NAME = "notifier"
# WeChat answers in its own passive reply; the others hear from us by SMS.
ACKNOWLEDGED_BY_SMS = {"hotline", "sms", "box", "open311", "web"}
GAUGE_SECONDS = 60


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_notifier)
    notifier = Notifier.from_settings(rt.settings, rt.store, partial(publish, rt.publisher))
    scorecard = Scorecard.from_settings(rt.redis, rt.city, rt.settings)
    handlers = Handlers(notifier, scorecard)

    rt.subscribe(AppealReceived, handlers.appeals)
    rt.subscribe(TicketAssigned, handlers.assignments)
    rt.subscribe(TicketUpdated, handlers.updates)
    rt.subscribe(SurveyAnswered, handlers.answers)

    next_gauges = [0.0]

    async def scan() -> None:
        await notifier.scan()
        if time.monotonic() >= next_gauges[0]:
            await scorecard.refresh_gauges(notifier.clock())
            next_gauges[0] = time.monotonic() + GAUGE_SECONDS

    run_periodically(app, rt.settings.timer_scan_seconds, scan, "notifier scan")
    return app


class Handlers:
    """What the subscribers do with a parsed batch (kept apart so tests can drive them in-process)."""

    def __init__(self, notifier: Notifier, scorecard: Scorecard) -> None:
        self.notifier = notifier
        self.scorecard = scorecard
        self.store = notifier.store

    async def appeals(self, appeals: list[AppealReceived]) -> None:
        wanted = [
            (a, a.caller.caller_id)
            for a in appeals
            if a.channel in ACKNOWLEDGED_BY_SMS and a.caller.caller_id is not None
        ]
        phones = await self.notifier.phones([caller for _, caller in wanted])
        await self.notifier.sms.send_many(
            [
                (a.event_id, self.notifier.ack_message(a.ticket_no, phone, urgent=a.urgent_flag))
                for (a, _), phone in zip(wanted, phones, strict=True)
                if phone
            ]
        )

    async def assignments(self, assigned: list[TicketAssigned]) -> None:
        await self.scorecard.record(assigned, [None] * len(assigned))
        meetings = [a for a in assigned if a.via == "meeting"]
        for a, ticket in zip(
            meetings, await self.store.get_many([a.ticket_no for a in meetings]), strict=False
        ):
            if ticket is not None:
                await self.notifier.progress(a, ticket, "progress_meeting")

    async def updates(self, updates: list[TicketUpdated]) -> None:
        await self.notifier.supervise(
            [u for u in updates if u.action in ("overdue", "escalated")], self.scorecard.city
        )
        wanted = [u for u in updates if u.action in ("accepted", "resolved", "extension_approved")]
        tickets = await self.store.get_many([u.ticket_no for u in wanted])
        accepted = [(u, t) for u, t in zip(wanted, tickets, strict=False) if u.action == "accepted"]
        await self.scorecard.record([u for u, _ in accepted], [t for _, t in accepted])
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
        await self.scorecard.record(counted, await self.store.get_many([a.ticket_no for a in counted]))

    def _local_date(self, value: object) -> str:
        return until_date(value, self.notifier.policy.tz)
